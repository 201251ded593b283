"""The Procfile's ``web:`` line, for the benchmarks that serve the app as it runs in production
(bench/serving.py, bench/api_overhead.py ``--server procfile``). Stdlib only."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# granian's or gunicorn's positional APP argument: ``module.path:attribute``
_APP_TOKEN = re.compile(r"(?<=\s)[A-Za-z_][\w.]*:[A-Za-z_]\w*(?=\s|$)")


def procfile_web() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("the Procfile has no web: line")


def web_command(*, port: int, venv_bin: Path, app: str | None = None) -> list[str]:
    """The web line as honcho runs it: through the shell (for ``${TIERLAB_VAR_DIR:-var}``), on ``port``,
    with the virtualenv's executables; ``app`` (``module:attribute``) in place of the line's own app."""
    web = procfile_web().replace("${WEB_PORT}", str(port)).replace(".venv/bin/", f"{venv_bin}/")
    if app is not None:
        web, found = _APP_TOKEN.subn(app, web)
        if found != 1:
            raise RuntimeError(f"cannot tell the WSGI app in the Procfile's web line ({found} candidates): {web}")
    return ["/bin/sh", "-c", f"exec {web}"]


def web_app() -> str:
    """The WSGI app the web line serves (``module:attribute``)."""
    found = _APP_TOKEN.findall(" " + procfile_web())
    if len(found) != 1:
        raise RuntimeError(f"cannot tell the WSGI app in the Procfile's web line: {procfile_web()}")
    return found[0]


def web_workers() -> int:
    """Worker processes the web line starts (``--workers N``; granian's and gunicorn's default is 1)."""
    match = re.search(r"(?:--workers|-w)[ =](\d+)", procfile_web())
    return int(match.group(1)) if match else 1


def web_threads() -> int:
    """Threads per worker (granian ``--blocking-threads``, gunicorn ``--threads``), 1 when not given."""
    match = re.search(r"--(?:blocking-threads|threads)[ =](\d+)", procfile_web())
    return int(match.group(1)) if match else 1
