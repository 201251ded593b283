"""Making right what a Redis quota script did when its caller never heard back (``UnansweredScript``).

A script sent to a Redis that then stalls may have run just before the stall, with its answer lost.
The caller cannot know, so it writes down what the script would have done, and this module settles it
once Redis answers again:

- An unanswered **consume** (a non-streamed request without ``X-Request-Id``, answered 503): if the
  script ran, it counted the request and streamed its usage event. The stream drain skips an event
  with such a row and gives its counts back (``RedisQuotaBackend.unanswered_consume_undo``, once per
  request: a guard key); a record stored before the row was written (the reply was lost but the drain
  was quicker) is removed here, rollups included. A row with neither, past the request-id retention,
  is closed: the script never ran, or ran after its deadline and did nothing. A request *with* an
  ``X-Request-Id`` needs none of this: its client sends it again and is answered from its record.
- An unanswered **settle** (a stream answered 200): sent again here (a settle runs once: it is
  conditional on its reservation), and until then the sweeper keeps the reservation instead of refunding
  it, so the answered stream is recorded exactly once.

``unanswered_reconcile`` runs from the sweeper (``RedisQuotaBackend.sweep``, every 60 s by beat).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError, transaction

from usage.models import UnansweredScript, UsageRecord
from usage.quotas.base import QuotaBackendUnavailable
from usage.rollups import usage_record_remove

if TYPE_CHECKING:
    from usage.quotas.redis import RedisQuotaBackend

logger = logging.getLogger(__name__)

# Resolved rows are kept this long (for the operator's eye), then deleted.
RESOLVED_KEPT = timedelta(days=2)
BATCH = 1000


def unanswered_note(*, kind: str, team_id: int, request_id: str, payload: dict[str, Any], now: datetime) -> None:
    """Write down a script whose answer never came (idempotent). If the database fails too, log it:
    the request is still answered as it would have been."""
    try:
        with transaction.atomic():
            UnansweredScript.objects.get_or_create(
                kind=kind, team_id=team_id, request_id=request_id, defaults={"payload": payload, "created_at": now}
            )
    except DatabaseError:
        logger.exception("unanswered %s of request %s of team %s could not be written down", kind, request_id, team_id)


def unanswered_consumes(*, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], UnansweredScript]:
    """The consume rows of these (team id, request id) pairs, resolved or not (one query)."""
    wanted = set(keys)
    if not wanted:
        return {}
    rows = UnansweredScript.objects.filter(
        kind=UnansweredScript.Kind.CONSUME, request_id__in={request_id for _team, request_id in wanted}
    )
    return {(row.team_id, row.request_id): row for row in rows if (row.team_id, row.request_id) in wanted}


def unanswered_resolve(*, row_ids: Iterable[int], now: datetime) -> None:
    UnansweredScript.objects.filter(id__in=list(row_ids), resolved_at__isnull=True).update(resolved_at=now)


def unanswered_settle_reservations() -> set[str]:
    """The reservations of settles not yet sent again: the sweeper must not refund them."""
    payloads = UnansweredScript.objects.filter(kind=UnansweredScript.Kind.SETTLE, resolved_at__isnull=True)
    return {payload["reservation"] for payload in payloads.values_list("payload", flat=True)}


def unanswered_reconcile(*, backend: RedisQuotaBackend, now: datetime) -> int:
    """Settle the open rows (see the module docstring); returns how many were resolved. Rows whose
    Redis call fails again stay open for the next run."""
    resolved = 0
    open_rows = list(UnansweredScript.objects.filter(resolved_at__isnull=True).order_by("id")[:BATCH])
    for row in (row for row in open_rows if row.kind == UnansweredScript.Kind.SETTLE):
        try:
            recorded = backend.settle_again(row.payload)
        except QuotaBackendUnavailable as error:
            logger.warning("settle of request %s sent again, still unanswered: %s", row.request_id, error)
            continue
        logger.warning("settle of request %s sent again: %s", row.request_id, "recorded" if recorded else "ran before")
        unanswered_resolve(row_ids=[row.id], now=now)
        resolved += 1
    consumes = [row for row in open_rows if row.kind == UnansweredScript.Kind.CONSUME]
    records = {
        (team_id, request_id): record_id
        for record_id, team_id, request_id in UsageRecord.objects.filter(
            request_id__in=[row.request_id for row in consumes]
        ).values_list("id", "team_id", "request_id")
    }
    expired_before = now - timedelta(seconds=settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS)
    for row in consumes:
        record_id = records.get((row.team_id, row.request_id))
        if record_id is not None:
            try:
                backend.unanswered_consume_undo(row)
            except QuotaBackendUnavailable as error:
                logger.warning("request %s answered 503 but recorded: not undone yet: %s", row.request_id, error)
                continue
            usage_record_remove(record_id=record_id)
            logger.warning("request %s answered 503 but recorded by a late answer: record removed", row.request_id)
        elif row.created_at >= expired_before:
            continue  # its event may still be in the stream: the drain will skip it
        unanswered_resolve(row_ids=[row.id], now=now)
        resolved += 1
    UnansweredScript.objects.filter(resolved_at__lt=now - RESOLVED_KEPT).delete()
    return resolved
