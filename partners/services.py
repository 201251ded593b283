"""Hosting partners: services and selectors for partners, their keys, their share rates, and the
ingest of the usage events they report (POST /api/v1/partner/usage-events, partners/api.py).

Statements (what a partner owes per month) live in partners/statements.py.

Partner keys follow the API-key scheme of accounts/services.py (a clear prefix for the lookup, the
whole key only as its SHA-256 hash, compared in constant time) with their own marker, "tlp-", so a
partner key is never mistaken for a team's model-API key, nor the reverse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Team
from accounts.selectors import secret_key_match
from accounts.services import api_key_create, secret_key_save
from core.errors import ApplicationError
from core.local_cache import TTLCache
from core.periods import add_months
from core.sql import insert_rows
from partners.models import (
    Partner,
    PartnerChannelKey,
    PartnerKey,
    PartnerShareRate,
    PartnerStatement,
    PartnerUsageEvent,
)


class PartnerError(ApplicationError):
    code = "invalid_partner_request"


# --- Partners and share rates --------------------------------------------------------------------------


def partner_get(*, slug: str) -> Partner | None:
    return Partner.objects.filter(slug=slug).first()


def share_rates_for(*, partner_id: int) -> list[tuple[date, int]]:
    """The partner's rates as (effective_from, share_bps), oldest first."""
    return list(
        PartnerShareRate.objects.filter(partner_id=partner_id)
        .order_by("effective_from")
        .values_list("effective_from", "share_bps")
    )


def share_bps_on(*, rates: list[tuple[date, int]], day: date) -> int:
    """The rate in force on ``day``: the one with the greatest effective_from <= day. Before the first
    rate there is none, and 0 is owed (an operator who wants earlier events shared adds a rate dated
    earlier, before the statement for that month is issued)."""
    bps = 0
    for effective_from, share_bps in rates:
        if effective_from > day:
            break
        bps = share_bps
    return bps


def share_rates_locked_before(*, partner_id: int) -> date | None:
    """The first day a share rate may still be set or changed for: the day after the last month an
    issued statement covers (None: no statement yet, every date is open).

    Why the whole covered range is frozen, not only "dates with events": a statement states the rate it
    applied per line; changing a rate dated inside a closed month would make later adjustment lines for
    that month disagree with the closed statement, which the issue forbids ("never rewrites closed
    statements")."""
    last = PartnerStatement.objects.filter(partner_id=partner_id).order_by("-month").values_list("month", flat=True)
    last_month = last.first()
    if last_month is None:
        return None
    return add_months(last_month, 1)


@transaction.atomic
def partner_share_rate_set(*, partner: Partner, share_bps: int, effective_from: date) -> PartnerShareRate:
    """Set the share from ``effective_from`` on (replacing a rate set for that very day), refusing a
    date an issued statement already covers."""
    Partner.objects.select_for_update().filter(pk=partner.pk).first()  # one rate change per partner at a time
    locked_before = share_rates_locked_before(partner_id=partner.pk)
    if locked_before is not None and effective_from < locked_before:
        raise PartnerError(
            f"The share for dates before {locked_before:%Y-%m-%d} is on issued statements and cannot change; "
            f"choose {locked_before:%Y-%m-%d} or later.",
            extra={"field": "effective_from"},
        )
    rate = PartnerShareRate.objects.filter(partner=partner, effective_from=effective_from).first()
    if rate is None:
        rate = PartnerShareRate(partner=partner, effective_from=effective_from)
    rate.share_bps = share_bps
    rate.full_clean()
    rate.save()
    return rate


@transaction.atomic
def partner_create(
    *,
    slug: str,
    name: str,
    share_bps: int,
    contact_email: str,
    share_from: date | None = None,
    now: datetime | None = None,
) -> tuple[Partner, str]:
    """Create a partner with its first share rate (effective from ``share_from``, default today, UTC) and
    a first key; returns (partner, key secret). The secret is not stored and cannot be shown again. A
    share starting in the past covers a partner that reports usage from before it was entered here."""
    now = now or timezone.now()
    partner = Partner(slug=slug, name=name, contact_email=contact_email)
    partner.full_clean()
    partner.save()
    rate = PartnerShareRate(
        partner=partner, share_bps=share_bps, effective_from=share_from or now.astimezone(UTC).date()
    )
    rate.full_clean()
    rate.save()
    _, secret = partner_key_create(partner=partner)
    return partner, secret


# --- Partner keys ------------------------------------------------------------------------------------------
PARTNER_KEY_MARKER = "tlp-"
PARTNER_KEY_PREFIX_LENGTH = 16


@transaction.atomic
def partner_channel_key_create(*, partner: Partner, team: Team, name: str) -> tuple[ApiKey, str]:
    """An API key for ``team`` issued through ``partner``'s channel; returns (key, secret), the secret
    shown once. The team's traffic through it is attributed to the partner (usage records, rollups,
    statements' direct lines)."""
    key, secret = api_key_create(team=team, name=name)
    PartnerChannelKey.objects.create(api_key=key, partner=partner)
    return key, secret


def partner_key_create(*, partner: Partner, name: str = "default") -> tuple[PartnerKey, str]:
    """Create a key for ``partner``'s usage reports; returns (key, secret), the secret shown once."""
    name = (name or "default").strip() or "default"
    created = secret_key_save(
        marker=PARTNER_KEY_MARKER,
        prefix_length=PARTNER_KEY_PREFIX_LENGTH,
        build=lambda prefix, secret_hash: PartnerKey(
            partner=partner, name=name, prefix=prefix, secret_hash=secret_hash
        ),
    )
    if created is None:
        raise PartnerError("Could not create a unique key; try again.")
    return created


@transaction.atomic
def partner_key_revoke(*, key: PartnerKey, now: datetime | None = None) -> PartnerKey:
    """Revoke ``key`` (idempotent); refused within the auth cache's TTL (seconds)."""
    if key.revoked_at is None:
        key.revoked_at = now or timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


@dataclass(frozen=True)
class AuthenticatedPartner:
    key_id: int
    partner_id: int
    is_active: bool


@dataclass(frozen=True)
class _PartnerKeyRow:
    key_id: int
    partner_id: int
    secret_hash: str
    revoked_at: datetime | None
    is_active: bool


_partner_key_cache: TTLCache[str, _PartnerKeyRow | None] = TTLCache(ttl=settings.TIERLAB_AUTH_CACHE_SECONDS)
# When this process last wrote each key's last_used_at: at most one write per key a minute, not one
# per batch (the column says "used recently", not an audit trail).
_last_used_written: dict[int, datetime] = {}
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _load_partner_key(prefix: str) -> _PartnerKeyRow | None:
    row = (
        PartnerKey.objects.filter(prefix=prefix)
        .values_list("id", "partner_id", "secret_hash", "revoked_at", "partner__is_active")
        .first()
    )
    return _PartnerKeyRow(*row) if row else None


def partner_key_authenticate(*, raw_key: str, now: datetime | None = None) -> AuthenticatedPartner | None:
    """The partner ``raw_key`` belongs to, if the key exists, matches and is not revoked.

    One indexed lookup by prefix, cached in-process for TIERLAB_AUTH_CACHE_SECONDS (misses too), then
    a constant-time comparison of SHA-256 hashes, as for team API keys: a revocation or a partner's
    deactivation is seen within that TTL. Also moves the key's ``last_used_at`` (one UPDATE per key
    and process at most once a minute)."""
    row = secret_key_match(
        raw_key,
        marker=PARTNER_KEY_MARKER,
        prefix_length=PARTNER_KEY_PREFIX_LENGTH,
        cache=_partner_key_cache,
        load=_load_partner_key,
    )
    if row is None or row.revoked_at is not None:
        return None
    now = now or timezone.now()
    last = _last_used_written.get(row.key_id)
    if last is None or now - last >= LAST_USED_RESOLUTION:
        _last_used_written[row.key_id] = now
        PartnerKey.objects.filter(pk=row.key_id).update(last_used_at=now)
    return AuthenticatedPartner(key_id=row.key_id, partner_id=row.partner_id, is_active=row.is_active)


def partner_key_cache_clear() -> None:
    """For tests and scripts that need a revocation seen at once in this process."""
    _partner_key_cache.clear()
    _last_used_written.clear()


# --- Usage-event ingest ---------------------------------------------------------------------------------
MAX_EVENTS_PER_BATCH = 1_000
# How far in the future an event's time may be: partners' clocks drift a little; more than this is
# a wrong timestamp, which would put the event on a month not yet closed for the wrong reason.
FUTURE_SKEW = timedelta(minutes=5)
_EVENT_FIELDS = ("event_id", "customer", "model", "prompt_tokens", "completion_tokens", "amount_cents", "currency")
# The most one event may state for prompt_tokens, completion_tokens and amount_cents. Why 10^12: the
# statement sums these per line (month, model, currency, rate) into 64-bit columns (bigint, at most
# 9.2 * 10^18). At 10^12 a full batch (1,000 events) sums to at most 10^15, so a line overflows only
# after 9.2 million events that each state the maximum, i.e. over 9,000 full batches of absurd values
# in one month for one model; before, two events of 2^63 - 1 were enough to make the month's
# statement impossible to issue. 10^12 is far above any real event: a trillion tokens is about a
# million times the largest context window, and $10 billion is not one request's price.
MAX_EVENT_COUNT = 10**12


@dataclass
class IngestResult:
    """The response of one batch: {"accepted", "duplicates", "rejected", "errors": [{"index", "message"}]}.

    accepted + duplicates + rejected == the number of events sent. A duplicate is an event id this
    partner already reported (in an earlier batch, a concurrent one, or earlier in the same batch)."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": self.errors,
        }


_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def _clean_text(value: str) -> bool:
    """False for a string no database stores faithfully: PostgreSQL refuses NUL in text and a lone
    surrogate (U+D800..U+DFFF) cannot be encoded as UTF-8; SQLite stores the latter, and the admin
    page listing it then fails to render."""
    return _UNSTORABLE_CHARACTER.search(value) is None


def _text(event: dict, name: str, limit: int) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValueError(f"'{name}' must be a non-empty string of at most {limit} characters.")
    return value


def _count(event: dict, name: str) -> int:
    value = event.get(name)
    if type(value) is not int or not 0 <= value <= MAX_EVENT_COUNT:  # bool is an int subclass: excluded
        raise ValueError(f"'{name}' must be an integer from 0 to {MAX_EVENT_COUNT}.")
    return value


def _time(event: dict, earliest: datetime, latest: datetime) -> datetime:
    value = event.get("time")
    if not isinstance(value, str):
        raise ValueError("'time' must be an ISO 8601 date-time with a timezone, e.g. 2026-05-01T12:00:00Z.")
    try:
        when = datetime.fromisoformat(value)  # Python 3.11 reads the "Z" suffix too
    except ValueError:
        raise ValueError(f"'time' is not an ISO 8601 date-time: {value[:40]!r}.") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("'time' must include a timezone (e.g. 'Z' or '+00:00').")
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is in year 0 in UTC, 9999-12-31T23:59-14:00 in 10000
        raise ValueError(f"'time' is out of range: {value[:40]!r}.") from None
    if when > latest:
        raise ValueError("'time' is in the future.")
    if when < earliest:
        raise ValueError(f"'time' is too old: events before {earliest:%Y-%m-%d} (UTC) are not accepted.")
    return when


def _validate_event(event: Any, *, earliest: datetime, latest: datetime) -> tuple:
    """The event as a row (event_id, customer, model, prompt, completion, amount, currency, time), or
    ValueError with the first thing wrong with it. Plain Python, no serializer: measured on 1,000
    events, this takes 1.1 ms, a DRF Serializer(many=True) with the same rules 33 ms, and json.loads of
    the body 2.5 ms; at 33 ms a batch the serializer alone would cap a 2-core server near 60,000
    events/s before any SQL.

    Everything the INSERT could refuse is refused here, per event, so one bad event never fails the
    batch: lengths, integer bounds, times the database can represent, strings without NUL or lone
    surrogates, and a flat object (no nested objects or arrays, even in fields we do not read)."""
    if not isinstance(event, dict):
        raise ValueError("An event must be a JSON object.")
    for name, value in event.items():
        name = str(name)  # JSON keys are strings; a caller in Python might pass other keys
        if isinstance(value, dict | list):
            raise ValueError(f"{name[:40]!r} must not be an object or an array: an event is a flat object.")
        if not _clean_text(name) or (isinstance(value, str) and not _clean_text(value)):
            raise ValueError(f"{name[:40]!r} must not contain NUL characters or unpaired surrogates.")
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 100:
        raise ValueError("'event_id' must be a string of 1 to 100 characters.")
    customer = _text(event, "customer", 200)
    model = _text(event, "model", 100)
    prompt_tokens = _count(event, "prompt_tokens")
    completion_tokens = _count(event, "completion_tokens")
    amount_cents = _count(event, "amount_cents")
    currency = event.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isascii() or not currency.isalpha():
        raise ValueError("'currency' must be a 3-letter ISO 4217 code, e.g. 'usd'.")
    occurred_at = _time(event, earliest, latest)
    return (event_id, customer, model, prompt_tokens, completion_tokens, amount_cents, currency.lower(), occurred_at)


def partner_events_not_before(*, partner_id: int) -> datetime:
    """The earliest event time the ingest accepts for the partner: its first share rate's date (UTC
    midnight) minus TIERLAB_PARTNER_EVENT_MAX_LATENESS_DAYS. Older events would be owed nothing (no
    rate) and would make the statement task issue a statement for every month since (the finding: an
    event dated 0001-01-01 meant about 24,000 statements). A partner without a rate (not made by
    partner_create) gets the lateness before its creation."""
    first = PartnerShareRate.objects.filter(partner_id=partner_id).order_by("effective_from").first()
    if first is not None:
        start = datetime.combine(first.effective_from, datetime.min.time(), tzinfo=UTC)
    else:
        created = Partner.objects.filter(pk=partner_id).values_list("created_at", flat=True).first()
        start = created or timezone.now()
    return start - timedelta(days=settings.TIERLAB_PARTNER_EVENT_MAX_LATENESS_DAYS)


def partner_usage_events_ingest(*, partner_id: int, events: list[Any], now: datetime | None = None) -> IngestResult:
    """Accept each valid event of ``events`` exactly once per (partner, event id).

    Invalid events are reported per index and the valid ones are kept. The valid, distinct events go
    to the database in ONE statement, ``INSERT ... ON CONFLICT (partner_id, event_id) DO NOTHING
    RETURNING event_id``: the rows it returns are exactly those this call inserted, so "accepted" is
    exact even when the same batch is sent twice at once (the unique constraint decides, and on
    PostgreSQL the second insert of a key waits for the first transaction and then skips it).
    Events for months whose statement is already issued are accepted too: the next statement carries
    them as adjustment lines (partners/statements.py)."""
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise PartnerError(f"At most {MAX_EVENTS_PER_BATCH} events per request.", extra={"field": "events"})
    now = now or timezone.now()
    latest = now + FUTURE_SKEW
    earliest = partner_events_not_before(partner_id=partner_id)
    result = IngestResult()
    rows: list[tuple] = []
    seen: set[str] = set()
    for index, event in enumerate(events):
        try:
            row = _validate_event(event, earliest=earliest, latest=latest)
        except ValueError as exc:
            result.rejected += 1
            result.errors.append({"index": index, "message": str(exc)})
            continue
        if row[0] in seen:  # a repeat inside the batch: the first occurrence is the one that counts
            result.duplicates += 1
            continue
        seen.add(row[0])
        rows.append(row)
    if rows:
        inserted = _insert_events(partner_id=partner_id, rows=rows, received_at=now)
        result.accepted = inserted
        result.duplicates += len(rows) - inserted
    return result


def _insert_events(*, partner_id: int, rows: list[tuple], received_at: datetime) -> int:
    """Insert ``rows`` in one statement, skipping event ids the partner already reported; returns how
    many were inserted. The rows travel as one JSON parameter (core.sql.rows_cte: measured faster
    than a placeholder per value with psycopg's client-side binding, and free of SQLite's parameter
    limit)."""
    inserted = insert_rows(
        PartnerUsageEvent,
        [*_EVENT_FIELDS, "occurred_at"],
        rows,
        constants={"partner": partner_id, "received_at": received_at, "statement": None},
        suffix="ON CONFLICT (partner_id, event_id) DO NOTHING RETURNING 1",
    )
    return len(inserted)
