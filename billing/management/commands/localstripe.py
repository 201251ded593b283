"""`manage.py localstripe`: the loopback wrapper around localstripe (a stateful fake Stripe server).

Why not the stock `localstripe` command (DESIGN.md, "Stripe test mode without the internet"): it binds
every interface (``::``) and pickles its whole store to a fixed ``/tmp/localstripe.pickle`` after every
write, which gets slower as the store grows. This wrapper serves the same aiohttp ``app`` on 127.0.0.1
only and keeps state either in memory (default) or under ``var/localstripe.pickle``, written at most
once a second instead of after every write.

With ``--state var`` (how `make run` starts it) it is the site's own localstripe: it also publishes its
URL in ``var/run/localstripe.url`` while it serves, so a management command run in another shell finds
it on whatever port it was given (settings.STRIPE_API_BASE reads it; core/runfiles.py).

Webhook registrations live in localstripe's process memory and are lost on restart, so TierLab's
webhook URL and STRIPE_WEBHOOK_SECRET are registered at every start (``--webhook-url ''`` skips it;
the test fixture does so, so a test server never posts to a developer's running site).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing.management.commands._card_brands import patch_card_brands
from core import runfiles

WEBHOOK_NAME = "tierlab"
# var mode: the store is written this long after a change at the latest (not after every write).
DUMP_INTERVAL_SECONDS = 1.0


def default_webhook_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/stripe/webhook/"


class Command(BaseCommand):
    help = "Serve localstripe (fake Stripe) on 127.0.0.1 and register TierLab's webhook with it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=settings.LOCALSTRIPE_PORT)
        parser.add_argument(
            "--webhook-url",
            default=None,
            help="Where localstripe posts events (default: http://127.0.0.1:$PORT/stripe/webhook/, PORT "
            "defaulting to 8000). An empty value registers no webhook.",
        )
        parser.add_argument(
            "--state",
            choices=["memory", "var"],
            default="memory",
            help="memory: start empty, keep nothing; var: load and save var/localstripe.pickle.",
        )
        parser.add_argument(
            "--state-file", default=None, help="With --state var: another file than var/localstripe.pickle."
        )

    def handle(
        self, *args: Any, port: int, webhook_url: str | None, state: str, state_file: str | None, **options: Any
    ) -> None:
        # Imported here: localstripe is a development/test dependency of this command only.
        from aiohttp import web
        from localstripe import resources, webhooks
        from localstripe.server import app

        if webhook_url is None:
            webhook_url = default_webhook_url()
        if webhook_url and not webhook_url.startswith(("http://", "https://")):
            raise CommandError(f"--webhook-url must be an http(s) URL, not {webhook_url!r}")

        state_path = Path(state_file) if state_file else Path(settings.VAR_DIR) / "localstripe.pickle"
        persister = _StorePersister(state_path) if state == "var" else None
        _patch_store(resources.Store, persister)
        patch_card_brands(resources)  # localstripe calls every card a Visa
        if persister is not None:
            persister.load(resources.store)
            app.on_startup.append(persister.start)
            app.on_cleanup.append(persister.stop)

        async def register_webhook(_app: web.Application) -> None:
            # What POST /_config/webhooks/tierlab does (localstripe.server.config_webhook), done in-process
            # before the port opens: no window in which an event could be created without a receiver.
            if webhook_url:
                webhooks.register_webhook(WEBHOOK_NAME, webhook_url, settings.STRIPE_WEBHOOK_SECRET, None)
                logging.getLogger(__name__).info("localstripe: webhook %r -> %s", WEBHOOK_NAME, webhook_url)

        app.on_startup.append(register_webhook)
        if state == "var":
            url, url_file = f"http://127.0.0.1:{port}", Path(settings.LOCALSTRIPE_URL_FILE)

            async def publish_url(_app: web.Application) -> None:
                runfiles.url_file_write(url_file, url)

            async def withdraw_url(_app: web.Application) -> None:
                runfiles.url_file_remove(url_file, url)

            app.on_startup.append(publish_url)
            app.on_cleanup.append(withdraw_url)

        self.stdout.write(
            f"localstripe on http://127.0.0.1:{port} (state: {state}"
            f"{' ' + str(state_path) if persister else ''}; webhook: {webhook_url or 'none'})"
        )
        access_log = logging.getLogger("aiohttp.access")
        web.run_app(app, host="127.0.0.1", port=port, access_log=access_log, print=None)


def _patch_store(store_cls: type, persister: _StorePersister | None) -> None:
    """Replace localstripe's fixed-path, every-write pickling (Store.dump_to_disk / try_load_from_disk)."""

    def dump_to_disk(self) -> None:
        if persister is not None:
            persister.dirty = True  # written by the persister's loop, at most once per interval

    def try_load_from_disk(self) -> None:
        if persister is not None:
            persister.load(self)

    store_cls.dump_to_disk = dump_to_disk
    store_cls.try_load_from_disk = try_load_from_disk


class _StorePersister:
    """Pickles localstripe's store under var/ when it changed, from the server's own event loop (every
    write to the store happens on that loop, so the snapshot is consistent), and once more at shutdown."""

    def __init__(self, path: Path):
        self.path = path
        self.dirty = False
        self._task: asyncio.Task | None = None
        self._store: dict | None = None

    def load(self, store: dict) -> None:
        self._store = store
        try:
            with self.path.open("rb") as f:
                # Our own file, written by this command under var/ (not user input).
                old = pickle.load(f)  # noqa: S301
        except FileNotFoundError:
            return
        except Exception as exc:  # a pickle from another localstripe version: start empty, say so
            logging.getLogger(__name__).warning("localstripe: ignoring unreadable %s (%s)", self.path, exc)
            return
        dict.clear(store)  # dict's own methods: Store's would call dump_to_disk on every item
        dict.update(store, old)

    def dump(self) -> None:
        if self._store is None:
            return
        self.dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a crash mid-write never leaves a truncated pickle behind.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".localstripe-", suffix=".pickle")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(self._store, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(DUMP_INTERVAL_SECONDS)
            if self.dirty:
                try:
                    self.dump()
                except Exception:
                    logging.getLogger(__name__).exception("localstripe: could not save %s", self.path)

    async def start(self, _app) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, _app) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.dirty:
            self.dump()
