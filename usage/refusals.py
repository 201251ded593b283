"""Counting refused model-API requests for operator analytics without a SQL write per refusal.

Each process buffers counts per (hour, team, tier, code) and flushes them in one transaction on the
first refusal after FLUSH_SECONDS since its last flush (so the first refusal after a quiet spell is
written at once). The tail of a burst waits in the buffer for the process's next refusal; a process
that exits first loses it. These are statistics, not money or usage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from datetime import datetime

from django.db import transaction

from core.sql import insert_rows, quoted_table

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0

_lock = threading.Lock()
_pending: Counter[tuple[datetime, int, str, str]] = Counter()
_last_flush = time.monotonic()


def refusal_count(*, team_id: int, tier_slug: str, code: str, now: datetime, count: int = 1) -> None:
    """Count one refused request (or ``count`` of them: the simulator refuses traffic in aggregate);
    flush the buffer if it is due."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    with _lock:
        _pending[(hour, team_id, tier_slug, code)] += count
        due = time.monotonic() - _last_flush >= FLUSH_SECONDS
    if due:
        refusal_counts_flush()


def refusal_counts_flush() -> int:
    """Write the buffered counts (adding to what is stored); returns how many rows were touched."""
    global _last_flush
    from usage.models import QuotaRefusalCount

    with _lock:
        batch = dict(_pending)
        _pending.clear()
        _last_flush = time.monotonic()
    if not batch:
        return 0
    try:
        # One statement for the whole buffer (a refusal-heavy minute, or the simulator's month of
        # counts for thousands of teams): insert each bucket, or add to the one stored.
        table = quoted_table(QuotaRefusalCount)
        with transaction.atomic():  # a savepoint: a failure here never breaks the caller's transaction
            insert_rows(
                QuotaRefusalCount,
                ("hour", "team", "tier_slug", "code", "count"),
                [(hour, team_id, tier_slug, code, n) for (hour, team_id, tier_slug, code), n in batch.items()],
                suffix="ON CONFLICT (hour, team_id, tier_slug, code)"
                f' DO UPDATE SET "count" = {table}."count" + excluded."count"',
            )
    except Exception:
        # Never turn a refusal into a 500 over statistics: keep the counts for the next flush.
        logger.exception("Could not flush %d refusal counts; kept for the next flush", len(batch))
        with _lock:
            _pending.update(batch)
        return 0
    return len(batch)


def refusal_counts_discard() -> None:
    """Drop the buffer (tests: counts must not leak into another test's database)."""
    with _lock:
        _pending.clear()
