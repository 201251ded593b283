"""Counting refused model-API requests for operator analytics.

The model API counts each refusal where it happens, atomically: one INSERT ... ON CONFLICT DO UPDATE
adding 1 to its (hour, team, tier, code) row (``refusal_record``). So the operator's page is current to
the request, whichever process refused, and nothing waits in a process's memory: before, each web
process buffered its counts and wrote them only at its next refusal, so a quiet process held the tail of
a burst indefinitely (issue 16: the page showed 2 refusals where the customer had 12).

The cost is one small write per refusal, on a path that has just refused the request (no completion,
no usage record): measured 2.4 ms per refusal on the embedded SQLite (against 6 us for the old
in-memory buffer), about what an admitted request's quota write costs on the database backend. It never
fails the request (an error is logged and the count dropped). Should refusal floods make that matter,
the next step is an atomic counter in Redis (HINCRBY) drained by a beat task, not a per-process buffer.

Aggregate callers that count many refusals at once in a single process (the simulator, a month of a
population's refusals) add to a buffer with ``refusal_count`` and write it in one statement with
``refusal_counts_flush``; they flush explicitly, so nothing is left waiting there either.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime

from django.db import transaction

from core.sql import insert_rows, quoted_table

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_pending: Counter[tuple[datetime, int, str, str]] = Counter()


def _hour(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0)


def _counts_add(batch: dict[tuple[datetime, int, str, str], int]) -> None:
    """Add ``batch`` to the stored counts in one statement: insert each bucket, or add to the one stored
    (atomic in the database, so concurrent processes never lose a count)."""
    from usage.models import QuotaRefusalCount

    table = quoted_table(QuotaRefusalCount)
    with transaction.atomic():  # a savepoint: a failure here never breaks the caller's transaction
        insert_rows(
            QuotaRefusalCount,
            ("hour", "team", "tier_slug", "code", "count"),
            [(hour, team_id, tier_slug, code, n) for (hour, team_id, tier_slug, code), n in batch.items()],
            suffix="ON CONFLICT (hour, team_id, tier_slug, code)"
            f' DO UPDATE SET "count" = {table}."count" + excluded."count"',
        )


def refusal_record(*, team_id: int, tier_slug: str, code: str, now: datetime) -> None:
    """Count one refused model-API request now (the request path). Never raises: statistics must not
    turn a refusal into a 500."""
    try:
        _counts_add({(_hour(now), team_id, tier_slug, code): 1})
    except Exception:
        logger.exception("Could not count a %s refusal of team %s", code, team_id)


def refusal_count(*, team_id: int, tier_slug: str, code: str, now: datetime, count: int = 1) -> None:
    """Add ``count`` refusals to this process's buffer (aggregate callers: the simulator); they are
    written by the caller's ``refusal_counts_flush``."""
    with _lock:
        _pending[(_hour(now), team_id, tier_slug, code)] += count


def refusal_counts_flush() -> int:
    """Write the buffered counts (adding to what is stored); returns how many rows were touched."""
    with _lock:
        batch = dict(_pending)
        _pending.clear()
    if not batch:
        return 0
    try:
        _counts_add(batch)
    except Exception:
        # Keep the counts for the next flush rather than fail the caller over statistics.
        logger.exception("Could not flush %d refusal counts; kept for the next flush", len(batch))
        with _lock:
            _pending.update(batch)
        return 0
    return len(batch)


def refusal_counts_discard() -> None:
    """Drop the buffer (tests: counts must not leak into another test's database)."""
    with _lock:
        _pending.clear()
