"""gunicorn settings for `make run` (the Procfile's web line: ``--config config/gunicorn.py``).

Options given on the command line win over these.

- ``pidfile`` and ``control_socket`` under ``var/run/`` (``$TIERLAB_VAR_DIR/run``): gunicorn's default
  control socket, ``$XDG_RUNTIME_DIR/gunicorn.ctl`` or ``~/.gunicorn/gunicorn.ctl``, is one path for every
  gunicorn of the user, and the first one to exit unlinks it under the others.
- ``worker_exit``: a worker that stopped cleanly (Ctrl-C, a graceful stop or restart) leaves at once
  instead of tearing down its loaded Django and Celery modules: that teardown took 1-5 s of CPU on a
  loaded 2-core machine, past the 5 s graceful timeout after which the master SIGKILLs its workers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_RUN_DIR = Path(os.environ.get("TIERLAB_VAR_DIR") or Path(__file__).resolve().parent.parent / "var") / "run"
_RUN_DIR.mkdir(parents=True, exist_ok=True)
pidfile = str(_RUN_DIR / "gunicorn.pid")
control_socket = str(_RUN_DIR / "gunicorn.ctl")


def worker_exit(server, worker) -> None:
    # Called in the worker, in gunicorn's `finally` around it, with the SystemExit on its way out. Only
    # a clean exit (status 0: every in-flight request was answered) is shortened; an error keeps its
    # status, which the master acts on (e.g. a worker that failed to boot halts it).
    exit_ = sys.exc_info()[1]
    if not isinstance(exit_, SystemExit) or exit_.code not in (0, None):
        return
    from django.db import connections

    connections.close_all()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
