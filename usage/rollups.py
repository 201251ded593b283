"""Usage rollups: ``UsageRecord`` rows folded into hourly and daily ``UsageRollup`` rows per (team, key,
model, partner channel), which the dashboard, the usage API, alerts and analytics read instead of
scanning records.

Incremental and exactly once. ``usage_rollup_fold`` adds the records with ``id`` above the cursor
(``RollupCursor``) to their buckets with one set-based statement per granularity (INSERT ... SELECT
... GROUP BY ... ON CONFLICT (the bucket's unique key) DO UPDATE SET x = x + excluded.x, which SQLite
>= 3.24 and PostgreSQL both run), and moves the cursor in the same transaction, under a row lock on
the cursor: a re-run, a retried task or a concurrent fold finds the cursor already past those records
and adds nothing. A late record (an old ``created_at`` written now, e.g. by the Redis stream drain)
has a new id, so the next fold adds it to its old bucket.

PostgreSQL hands out ids when a row is inserted, not when its transaction commits: a request whose
transaction got id 100 may commit after one that got id 101. A fold that saw 101 and moved the cursor
past it would never see 100. SQLite has no such gap (one writer at a time, ids in commit order).
Remedy on PostgreSQL: the beat task folds only up to the highest id it saw on its *previous* run
(the "horizon", kept in a second ``RollupCursor`` row), one beat interval (30 s) ago. Every
transaction that had taken an id by then has long committed or rolled back (the request path's and
the stream drain's transactions last milliseconds), so nothing below the horizon can still appear.
Readers do not lag: ``usage.selectors`` adds the records above the fold cursor to what the rollups
say, so quotas, alerts and the dashboard see every committed record at once.

``usage_rollup_rebuild`` recomputes buckets from the records (delete + reinsert in one transaction),
for repairs and to check the incremental fold.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import F, Max

from core.sql import param, quoted_table
from usage.models import RollupCursor, UsageRecord, UsageRollup

# The fold's cursor; and the highest id seen on the previous beat run, up to which the next run may
# fold on PostgreSQL (see the module docstring).
CURSOR_NAME = "usage"
HORIZON_NAME = "usage:horizon"

_COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
_KEY = ("team_id", "granularity", "bucket_start", "model", "api_key_id", "partner_id")


def _bucket_sql(granularity: str, column: str) -> str:
    """SQL for the start of the hour/day (UTC) containing ``column``, in the form the database stores
    datetimes (so it compares and upserts equal to ``bucket_start`` values the ORM writes)."""
    if connection.vendor == "postgresql":
        return f"(date_trunc('{granularity}', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
    # SQLite stores naive UTC text "YYYY-MM-DD HH:MM:SS[.ffffff]"; the ORM writes a whole hour as
    # "YYYY-MM-DD HH:00:00", exactly what these formats produce.
    # Every statement using this passes parameters, so a literal % is written %% (the paramstyle's
    # escape; with DEBUG on, Django's query logging applies ``sql % params`` and a bare % breaks it).
    fmt = "%%Y-%%m-%%d %%H:00:00" if granularity == "hour" else "%%Y-%%m-%%d 00:00:00"
    return f"strftime('{fmt}', {column})"


def _upsert_from_records_sql(granularity: str, where: str) -> str:
    """INSERT the records matching ``where`` (SQL over the record table) into ``granularity`` buckets,
    adding to existing buckets."""
    rollup, record = quoted_table(UsageRollup), quoted_table(UsageRecord)
    bucket = _bucket_sql(granularity, "created_at")
    updates = ", ".join(f"{c} = {rollup}.{c} + excluded.{c}" for c in _COUNTERS)
    # The WHERE is always present: SQLite needs one in an INSERT ... SELECT ... ON CONFLICT to parse it.
    return (
        f"INSERT INTO {rollup} ({', '.join(_KEY)}, {', '.join(_COUNTERS)}) "  # noqa: S608
        f"SELECT team_id, '{granularity}', {bucket}, model, COALESCE(api_key_id, 0), COALESCE(partner_id, 0), "
        "COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens) "
        f"FROM {record} WHERE {where} "
        f"GROUP BY team_id, {bucket}, model, COALESCE(api_key_id, 0), COALESCE(partner_id, 0) "
        f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET {updates}"
    )


def _cursor_locked(name: str) -> RollupCursor:
    """The cursor row, locked until the end of the transaction (created at 0 on first use)."""
    cursor, _ = RollupCursor.objects.select_for_update().get_or_create(name=name)
    return cursor


def usage_rollup_fold(*, batch_size: int = 100_000, up_to_id: int | None = None) -> int:
    """Fold the records with ids above the cursor (and at most ``up_to_id``; None: every committed
    record) into hour and day rollups. Returns how many records were folded.

    Works in id ranges of ``batch_size``, one transaction each, so a large backlog (a rebuild of the
    cursor, a worker that was down) never holds the cursor lock or a huge transaction for long; a crash
    loses at most the batch in progress, which the next run folds again.
    """
    if up_to_id is None:
        up_to_id = UsageRecord.objects.aggregate(top=Max("id"))["top"] or 0
    folded = 0
    while True:
        with transaction.atomic():
            cursor = _cursor_locked(CURSOR_NAME)
            low = cursor.last_record_id
            if low >= up_to_id:
                return folded
            high = min(up_to_id, low + batch_size)
            where = "id > %s AND id <= %s"
            with connection.cursor() as sql:
                sql.execute(_upsert_from_records_sql("hour", where), [low, high])
                sql.execute(_upsert_from_records_sql("day", where), [low, high])
            folded += UsageRecord.objects.filter(id__gt=low, id__lte=high).count()
            cursor.last_record_id = high
            cursor.save(update_fields=["last_record_id", "updated_at"])


def usage_rollup_fold_settled(*, batch_size: int = 100_000) -> int:
    """The beat task's fold: on PostgreSQL only up to the highest id the previous run saw (see the
    module docstring for why), then remember the highest id now; on SQLite everything committed."""
    if connection.vendor != "postgresql":
        return usage_rollup_fold(batch_size=batch_size)
    with transaction.atomic():
        horizon = _cursor_locked(HORIZON_NAME)
        up_to_id = horizon.last_record_id
        horizon.last_record_id = max(up_to_id, UsageRecord.objects.aggregate(top=Max("id"))["top"] or 0)
        horizon.save(update_fields=["last_record_id", "updated_at"])
    return usage_rollup_fold(batch_size=batch_size, up_to_id=up_to_id)


def bucket_step(granularity: str) -> timedelta:
    """The length of an "hour" or "day" bucket."""
    return timedelta(days=1) if granularity == "day" else timedelta(hours=1)


def bucket_floor(value: datetime, granularity: str) -> datetime:
    """The start of the UTC hour or day bucket containing ``value``."""
    value = value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return value.replace(hour=0) if granularity == "day" else value


def bucket_ceil(value: datetime, granularity: str) -> datetime:
    """``value`` itself if a bucket starts there, else the start of the next bucket."""
    floored = bucket_floor(value, granularity)
    return floored if floored == value else floored + bucket_step(granularity)


@transaction.atomic
def usage_rollup_rebuild(*, start: datetime, end: datetime) -> int:
    """Recompute every bucket in [start, end) from the records, widened to whole hours for the hour
    rollups and whole days for the day rollups (a bucket is never left half rebuilt). Returns the
    number of records counted.

    Counts only records at or below the fold cursor, under the cursor's lock: the records above it
    are the next fold's, which adds them to these rebuilt buckets exactly once. Day rollups are
    re-summed from the (just rebuilt) hour rollups of their day, which is the same as summing the day's
    records and much cheaper.
    """
    cursor = _cursor_locked(CURSOR_NAME)
    hour_start, hour_end = bucket_floor(start, "hour"), bucket_ceil(end, "hour")
    day_start, day_end = bucket_floor(start, "day"), bucket_ceil(end, "day")
    hours = UsageRollup.objects.filter(granularity=UsageRollup.Granularity.HOUR)
    hours.filter(bucket_start__gte=hour_start, bucket_start__lt=hour_end).delete()
    rollup = quoted_table(UsageRollup)
    with connection.cursor() as sql:
        sql.execute(
            _upsert_from_records_sql("hour", "created_at >= %s AND created_at < %s AND id <= %s"),
            [param(hour_start), param(hour_end), cursor.last_record_id],
        )
        UsageRollup.objects.filter(
            granularity=UsageRollup.Granularity.DAY, bucket_start__gte=day_start, bucket_start__lt=day_end
        ).delete()
        day = _bucket_sql("day", "bucket_start")
        sums = ", ".join(f"SUM({c})" for c in _COUNTERS)
        sql.execute(
            f"INSERT INTO {rollup} ({', '.join(_KEY)}, {', '.join(_COUNTERS)}) "  # noqa: S608
            f"SELECT team_id, 'day', {day}, model, api_key_id, partner_id, {sums} FROM {rollup} "
            "WHERE granularity = 'hour' AND bucket_start >= %s AND bucket_start < %s "
            f"GROUP BY team_id, {day}, model, api_key_id, partner_id",
            [param(day_start), param(day_end)],
        )
    return UsageRecord.objects.filter(
        created_at__gte=hour_start, created_at__lt=hour_end, id__lte=cursor.last_record_id
    ).count()


def usage_record_remove(*, record_id: int) -> bool:
    """Delete one usage record and, if the fold has already added it to its hour and day buckets, take
    it out of them again, in one transaction under the fold cursor's lock (so a concurrent fold either
    counted it, and it is taken out, or never will). For a record that should not exist (a request
    answered 503 whose script ran anyway: usage/unanswered.py). False if there was no such record."""
    with transaction.atomic():
        cursor = _cursor_locked(CURSOR_NAME)
        record = UsageRecord.objects.select_for_update().filter(id=record_id).first()
        if record is None:
            return False
        if record.id <= cursor.last_record_id:
            for granularity in ("hour", "day"):
                UsageRollup.objects.filter(
                    team_id=record.team_id,
                    granularity=granularity,
                    bucket_start=bucket_floor(record.created_at, granularity),
                    model=record.model,
                    api_key_id=record.api_key_id or 0,
                    partner_id=record.partner_id or 0,
                ).update(
                    requests=F("requests") - 1,
                    prompt_tokens=F("prompt_tokens") - record.prompt_tokens,
                    completion_tokens=F("completion_tokens") - record.completion_tokens,
                    total_tokens=F("total_tokens") - record.total_tokens,
                )
        record.delete()
        return True
