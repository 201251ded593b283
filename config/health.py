"""/healthz: is this node able to serve and record usage? 200 when every part answers, else 503.

Parts (``checks``; ``failing`` names the ones that fail):
- ``database``: answers and takes writes (a write statement that changes nothing: a read-only SQLite
  file or a read-only PostgreSQL transaction refuses it);
- ``cache``: the shared cache takes a key and gives it back (the account API's throttle counts in it);
- ``broker``: answers (the embedded broker's queue folder takes a file);
- ``disk`` (embedded default only: SQLite and/or the filesystem broker): the folders they live in have
  more than TIERLAB_HEALTHZ_MIN_FREE_DISK_MB free, since both fail on a full disk;
- ``quota_backend`` (Redis quota backend only): Redis answers, and where persistence is required
  (production) keeps answered usage (core/redis_persistence.py); elsewhere a Redis without it is
  reported, not failed.

The body reports each part. The scheduler's last beat and Stripe's reachability are reported but do
not fail the check: a stalled beat or an unreachable Stripe must be visible, yet neither stops the web
node from serving requests (charges wait and are retried by the billing engine).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from billing import stripe_gateway
from config.celery import app as celery_app
from core.models import Heartbeat
from core.redis_persistence import quota_redis_persistence
from core.selectors import heartbeat_last


class CheckFailed(Exception):
    """A part answered, but not well enough to record usage (disk nearly full, no Redis persistence)."""


def _timed(check) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = {"status": "ok", **(check() or {})}
    except CheckFailed as exc:
        result = {"status": "error", "error": str(exc)}
    except Exception as exc:  # any failure of a dependency is a failed check, reported, not raised
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _check_database() -> dict[str, Any]:
    table = connection.ops.quote_name(Heartbeat._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
        # A write that matches no row: it writes nothing, yet a database that cannot take writes
        # (SQLite opened read-only, PostgreSQL in a read-only transaction or a standby) refuses it.
        cursor.execute(f"UPDATE {table} SET count = count WHERE id = -1")  # noqa: S608 (no input)
    return {"vendor": connection.vendor, "writable": True}


def _check_cache() -> dict[str, Any]:
    probe = f"tierlab:healthz:{os.getpid()}"
    cache.set(probe, 1, timeout=10)
    if cache.get(probe) != 1:
        raise CheckFailed("the cache did not give back the key just set")
    return {"backend": settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1]}


def _embedded_folders() -> list[Path]:
    """The folders the embedded default writes usage and tasks into: SQLite's and the broker's."""
    folders = []
    if connection.vendor == "sqlite":
        folders.append(Path(connection.settings_dict["NAME"]).resolve().parent)
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    if str(settings.CELERY_BROKER_URL).startswith("filesystem://") and options.get("data_folder_in"):
        folders.append(Path(options["data_folder_in"]))
    return folders


def _check_disk(folders: list[Path]) -> dict[str, Any]:
    threshold = settings.TIERLAB_HEALTHZ_MIN_FREE_DISK_MB * 1024 * 1024
    free = {}
    for folder in folders:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        free[str(folder)] = shutil.disk_usage(existing).free
    low = {path: space for path, space in free.items() if space < threshold}
    if low:
        path, space = min(low.items(), key=lambda item: item[1])
        raise CheckFailed(
            f"{space // (1024 * 1024)} MB free under {path}, below the "
            f"{settings.TIERLAB_HEALTHZ_MIN_FREE_DISK_MB} MB threshold (TIERLAB_HEALTHZ_MIN_FREE_DISK_MB)"
        )
    return {"free_mb": {path: space // (1024 * 1024) for path, space in free.items()},
            "threshold_mb": settings.TIERLAB_HEALTHZ_MIN_FREE_DISK_MB}  # fmt: skip


def _check_quota_backend() -> dict[str, Any]:
    state = quota_redis_persistence()  # raises if Redis does not answer
    report = {"backend": "redis", "persistence": state.report()}
    if state.problems and settings.TIERLAB_REDIS_PERSISTENCE_REQUIRED:
        raise CheckFailed("; ".join(state.problems))
    return report


def _check_broker() -> dict[str, Any]:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        transport = conn.transport.driver_type
        if transport == "filesystem":
            # The filesystem transport "connects" to anything; check the queue folder is writable.
            folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
            # Write a probe file: os.access() says yes to root even on a read-only file system.
            os.makedirs(folder, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".healthz-"):
                pass
    return {"transport": str(transport)}


def _scheduler_state() -> dict[str, Any]:
    try:
        beat = heartbeat_last()
    except Exception as exc:
        return {"status": "unknown", "error": f"{type(exc).__name__}: {exc}"}
    if beat is None:
        return {"status": "never", "last_beat": None}
    age = (timezone.now() - beat.beat_at).total_seconds()
    stale = age > settings.TIERLAB_HEARTBEAT_STALE_AFTER_SECONDS
    return {
        "status": "stale" if stale else "ok",
        "last_beat": beat.beat_at.isoformat(),
        "age_seconds": round(age, 1),
        "beats": beat.count,
    }


def _stripe_state() -> dict[str, Any]:
    started = time.perf_counter()
    reachable = stripe_gateway.ping()  # never raises; bounded by the gateway's ping timeout
    return {
        "status": "ok" if reachable else "unreachable",
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def health_report() -> tuple[bool, dict[str, Any]]:
    """Every check, run now: (healthy, body). /healthz answers the body as JSON for machines, /status/
    (config/status.py) reads it out for people; one set of checks, so the two never disagree."""
    checks = {
        "database": _timed(_check_database),
        "cache": _timed(_check_cache),
        "broker": _timed(_check_broker),
    }
    folders = _embedded_folders()
    if folders:
        checks["disk"] = _timed(lambda: _check_disk(folders))
    if settings.TIERLAB_QUOTA_BACKEND == "redis":
        checks["quota_backend"] = _timed(_check_quota_backend)
    failing = [name for name, check in checks.items() if check["status"] != "ok"]
    healthy = not failing
    body = {
        "status": "ok" if healthy else "error",
        "failing": failing,
        "checks": checks,
        "scheduler": _scheduler_state(),
        "stripe": _stripe_state(),
        "time": timezone.now().isoformat(),
    }
    return healthy, body


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    healthy, body = health_report()
    return JsonResponse(body, status=200 if healthy else 503)
