"""The Celery application: configured from Django settings (CELERY_* names), tasks autodiscovered."""

import contextlib
import logging
import os
import sys
from pathlib import Path

from celery import Celery
from celery.signals import worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tierlab")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _make_filesystem_broker_folders(sender: Celery, **kwargs) -> None:
    # kombu's filesystem transport (the embedded default broker) expects its folders to exist.
    if str(sender.conf.broker_url).startswith("filesystem://"):
        for key in ("data_folder_in", "data_folder_out", "control_folder", "processed_folder"):
            folder = (sender.conf.broker_transport_options or {}).get(key)
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)


@worker_shutdown.connect
def _worker_exit_once_stopped(sender, **kwargs) -> None:
    """End the `celery worker` process as soon as its warm shutdown is complete.

    By then the worker has stopped consuming, requeued what it held, stopped and joined its pool and
    released its pid file. What remained was the interpreter's teardown of a fully loaded Django and
    Celery process (the pool's atexit finalizers, then freeing every module): 1-6 s of CPU-bound work on
    a loaded 2-core machine, which made Ctrl-C on `make run` overrun honcho's grace period and SIGKILL
    the worker. Logs and output are flushed first. Only the `celery ... worker` command's own process
    exits here, never a process that embeds a worker (a test)."""
    blueprint = getattr(sender, "blueprint", None)
    if blueprint is None or not blueprint.shutdown_complete.is_set() or not _is_worker_command():
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(sender.exitcode or 0)


def _is_worker_command() -> bool:
    return Path(sys.argv[0]).name in ("celery", "__main__.py") and "worker" in sys.argv[1:]
