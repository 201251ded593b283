"""/healthz: is this node able to serve? 200 when the database and the broker answer, else 503.

The body reports each part. The scheduler's last beat and Stripe's reachability are reported but do
not fail the check: a stalled beat or an unreachable Stripe must be visible, yet neither stops the web
node from serving requests (charges wait and are retried by the billing engine).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from billing import stripe_gateway
from config.celery import app as celery_app
from core.selectors import heartbeat_last


def _timed(check) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = {"status": "ok", **(check() or {})}
    except Exception as exc:  # any failure of a dependency is a failed check, reported, not raised
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def _check_broker() -> dict[str, Any]:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        transport = conn.transport_cls
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


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _timed(_check_database), "broker": _timed(_check_broker)}
    healthy = all(c["status"] == "ok" for c in checks.values())
    body = {
        "status": "ok" if healthy else "error",
        "checks": checks,
        "scheduler": _scheduler_state(),
        "stripe": _stripe_state(),
        "time": timezone.now().isoformat(),
    }
    return JsonResponse(body, status=200 if healthy else 503)
