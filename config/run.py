"""`make run`'s foreground: prints the banner, then runs the Procfile under honcho until Ctrl-C.

``python -m config.run --port 8000`` (the Makefile passes PORT). What it adds to ``honcho start``:

- Which processes: web, worker and beat always; ``stripe`` (localstripe) only when the settings say the
  site talks to it (``TIERLAB_RUN_STARTS_LOCALSTRIPE``: the embedded default with ``STRIPE_API_BASE``
  unset). Production mode, or ``STRIPE_API_BASE=`` (empty: Stripe's own test mode) with real keys,
  starts no localstripe, without editing the tracked Procfile.
- The environment every process gets: ``WEB_PORT``, ``LOCALSTRIPE_PORT`` (default 8420) and
  ``TIERLAB_VAR_DIR`` (absolute), under which the Procfile keeps its pid files and sockets (``run/``).
- A longer grace period: on Ctrl-C honcho sends SIGTERM to every process group, then SIGKILL to what is
  left after ``KILL_WAIT`` seconds, 5 in honcho. The Celery worker's warm shutdown (stop consuming, close
  its pool, requeue what it holds) takes a few seconds on a loaded machine; 9 s still stops everything
  within 10 s (tests/test_make_run.py sends SIGINT and checks that nothing was killed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
KILL_WAIT_SECONDS = 9
DEFAULT_LOCALSTRIPE_PORT = "8420"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m config.run", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000), help="web port")
    parser.add_argument("--procfile", default=str(BASE_DIR / "Procfile"))
    args = parser.parse_args(argv)

    os.environ["WEB_PORT"] = str(args.port)
    os.environ.setdefault("LOCALSTRIPE_PORT", DEFAULT_LOCALSTRIPE_PORT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    os.environ["TIERLAB_VAR_DIR"] = str(settings.VAR_DIR)
    Path(settings.RUN_DIR).mkdir(parents=True, exist_ok=True)
    processes = ["web", "worker", "beat"]
    if settings.TIERLAB_RUN_STARTS_LOCALSTRIPE:
        processes.append("stripe")
    call_command("tierlab_banner", port=args.port)
    sys.stdout.flush()

    os.chdir(BASE_DIR)  # the Procfile's paths are relative to the project
    import honcho.manager
    from honcho.command import main as honcho_main

    honcho.manager.KILL_WAIT = KILL_WAIT_SECONDS
    try:
        honcho_main(["start", "--procfile", args.procfile, "--app-root", str(BASE_DIR), *processes])
    except SystemExit as exit_:  # honcho's way out, once every process has stopped
        code = exit_.code if isinstance(exit_.code, int) else 1
    else:
        code = 0
    # Every process is gone by now: skip the teardown of this process's loaded Django (1-2 s of CPU on a
    # loaded machine, which kept make, and the terminal, waiting after everything had stopped).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
