"""Files `make run`'s processes leave under ``var/run/`` for other processes to find them.

The localstripe `make run` starts may be on any port (``LOCALSTRIPE_PORT``), which only `make run`'s own
processes are told. So it writes its URL to ``var/run/localstripe.url`` while it serves (removed when it
stops), and the settings of a command run in another shell read it from there.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

_LOOPBACK_URL = re.compile(r"http://127\.0\.0\.1:(\d{1,5})")


def localstripe_url(url_file: Path, default_port: int) -> str:
    """Where localstripe is: ``LOCALSTRIPE_PORT`` when this process was given one (`make run` passes it to
    every process it starts), else the URL the running localstripe published in ``url_file``, else
    ``default_port``. Only a loopback URL is taken from the file."""
    if os.environ.get("LOCALSTRIPE_PORT"):
        return f"http://127.0.0.1:{default_port}"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        published = url_file.read_text(encoding="utf-8").strip()
        match = _LOOPBACK_URL.fullmatch(published)
        if match and 0 < int(match.group(1)) < 65536:
            return published
    return f"http://127.0.0.1:{default_port}"


def url_file_write(url_file: Path, url: str) -> None:
    """Publish ``url`` in ``url_file`` (written then renamed: a reader never sees half of it)."""
    url_file.parent.mkdir(parents=True, exist_ok=True)
    part = url_file.with_name(f".{url_file.name}.{os.getpid()}")
    part.write_text(url + "\n", encoding="utf-8")
    os.replace(part, url_file)


def url_file_remove(url_file: Path, url: str) -> None:
    """Remove ``url_file`` if it still holds ``url`` (another localstripe may have replaced it since)."""
    with contextlib.suppress(OSError):
        if url_file.read_text(encoding="utf-8").strip() == url:
            url_file.unlink()
