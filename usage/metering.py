"""The metered request path of the model API (DESIGN.md, "Request path"): authenticate the key, read
the team's entitlements, check the model, reserve every limit in one atomic step, and afterwards
settle the reservation to the actual tokens, which records the usage exactly once.

Everything here is on the hot path: keys and entitlements come from short-lived in-process caches,
and the only shared-state operations are the quota backend's reserve and settle.

When the quota backend cannot answer (``QuotaBackendUnavailable``) the request is refused with 503
``quota_backend_unavailable`` and ``Retry-After``: it was not counted (usage/quotas/base.py says what a
backend guarantees about a call it did not answer). A Redis script whose answer never came is written
down and made right later (usage/unanswered.py): an unanswered consume of a request answered 503 is
not recorded, an unanswered settle of an answered stream is sent again by the sweeper.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

from django.conf import settings

from accounts.selectors import AuthenticatedKey, api_key_authenticate
from core.local_cache import DEFAULT_MAX_ENTRIES, InvalidatedCache, TTLCache, cache_generation
from tiers.selectors import Entitlements, entitlements_for_team, language_model_list_active
from usage import errors, extensions, refusals
from usage.callers import caller_row_load
from usage.models import PLAYGROUND_REQUEST_ID_PREFIX
from usage.quotas import get_quota_backend
from usage.quotas.base import (
    Decision,
    Limit,
    LimitName,
    QuotaBackendUnavailable,
    Reservation,
    UsageEvent,
    day_window,
    minute_window,
)

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
# Retry-After of a 503 quota_backend_unavailable: a stalled or restarting Redis is worth a short wait.
QUOTA_UNAVAILABLE_RETRY_AFTER_SECONDS = 2
# Retry-After of a 409 request_id_in_progress: the first request usually finishes within a second.
IN_PROGRESS_RETRY_AFTER_SECONDS = 1

_models_cache: TTLCache[str, dict[str, date]] = TTLCache(ttl=30)
# The first model release date each team needs a licence for (None: no licence needed, or granted).
# Kept for minutes, dropped when the feed says the team's licence agreement changed (core/invalidation.py).
_license_cache: InvalidatedCache[int, date | None] = InvalidatedCache()
# The hosting partner whose channel each key belongs to (None: a direct key). A key's channel is fixed
# when the key is made (partners.services.partner_channel_key_create makes both in one transaction) and
# never changes, so an entry stays valid for the key's life: kept an hour (bounded like every local
# cache), so with thousands of active keys this read is not repeated every few seconds per key.
_channel_cache: TTLCache[int, int | None] = TTLCache(ttl=3600)


@dataclass(frozen=True)
class Caller:
    """Who a metered request is for. ``key`` is None for the playground (a signed-in person, no key):
    its usage is recorded with no key and a ``PLAYGROUND_REQUEST_ID_PREFIX`` request id (usage.models)."""

    key: AuthenticatedKey | None
    entitlements: Entitlements
    partner_id: int | None = None  # the hosting partner whose channel the key belongs to, if any

    @property
    def team_id(self) -> int:
        return self.entitlements.team_id

    @property
    def key_id(self) -> int | None:
        return self.key.key_id if self.key is not None else None


@dataclass(frozen=True)
class Admission:
    """An admitted request: ``settle`` records it (its reservation is None for a replayed duplicate)."""

    caller: Caller
    request_id: str
    model: str
    limits: tuple[Limit, ...]
    decision: Decision

    @property
    def duplicate(self) -> bool:
        return self.decision.duplicate


def request_id_from_header(value: str | None) -> str:
    """The client's ``X-Request-Id`` if it sent a valid one (so its retries are not counted twice),
    else a fresh id."""
    if value is None or value == "":
        return f"req_{uuid.uuid4().hex}"
    if not _REQUEST_ID.match(value):
        raise errors.InvalidRequest(
            "X-Request-Id must be 1-100 characters of letters, digits, '.', '_', ':' or '-'.",
            param="X-Request-Id",
        )
    if value.startswith(PLAYGROUND_REQUEST_ID_PREFIX):
        raise errors.InvalidRequest(
            f"X-Request-Id may not start with '{PLAYGROUND_REQUEST_ID_PREFIX}' (the playground's own ids).",
            param="X-Request-Id",
        )
    return value


def request_hash(*, path: str, body: object) -> str:
    """What a client's request id is bound to (DESIGN.md "Request ids"): SHA-256 of the endpoint path
    (native and compat differ) and the canonical JSON of the parsed body. Only computed for requests
    that carry a client id."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{path}\n{canonical}".encode()).hexdigest()


def caller_authenticate(*, authorization: str | None, now: datetime) -> Caller:
    """The caller of a model-API request from its ``Authorization: Bearer <key>`` header."""
    if not authorization or authorization[:7].lower() != "bearer ":  # the scheme is case-insensitive (RFC 9110)
        raise errors.InvalidApiKey("Missing API key: send 'Authorization: Bearer <your TierLab API key>'.")
    key = api_key_authenticate(raw_key=authorization[7:].strip(), now=now, load_row=_caller_row_load)
    if key is None:
        raise errors.InvalidApiKey("Invalid API key: it is wrong, revoked or expired.")
    if not key.has_scope("model"):  # ApiKey.Scope.MODEL; the scopes come cached with the key
        raise errors.InsufficientScope("This API key lacks the 'model' scope: it is for the account API only.")
    entitlements = _entitlements_active(team_id=key.team_id, now=now)
    if not entitlements.includes_api_access:
        raise errors.ApiAccessNotIncluded(
            f"Your team's tier ({entitlements.tier_slug}) does not include API access: it is for the playground "
            "only, and its API keys are refused. Move to a tier with API access to call the API."
        )
    partner_id = _channel_cache.get_or_load(key.key_id, lambda: extensions.key_channel_partner(api_key_id=key.key_id))
    return Caller(key=key, entitlements=entitlements, partner_id=partner_id)


def _caller_row_load(prefix: str) -> tuple | None:
    """A key-cache miss: the key with its team's entitlements, licence gate and the key's channel in one
    statement (usage.callers); the latter two go into this module's caches."""
    generation = cache_generation()
    loaded = caller_row_load(prefix)
    if loaded is None:
        return None
    key_row, extra = loaded
    if "license_required_from" in extra:
        _license_cache.put(key_row[1], extra["license_required_from"], generation=generation)
    if "channel_partner_id" in extra:
        _channel_cache.put(key_row[0], extra["channel_partner_id"])
    return key_row


def caller_for_team(*, team_id: int, now: datetime) -> Caller:
    """The caller of a playground message: the signed-in person's current team, without a key, refused
    as the API refuses a key of that team (subscription_inactive). A tier without API access may chat."""
    return Caller(key=None, entitlements=_entitlements_active(team_id=team_id, now=now))


def _entitlements_active(*, team_id: int, now: datetime) -> Entitlements:
    entitlements = entitlements_for_team(team_id=team_id)
    if entitlements is None or not entitlements.is_active_at(now):
        status = entitlements.subscription_status if entitlements else "none"
        refusals.refusal_record(
            team_id=team_id,
            tier_slug=entitlements.tier_slug if entitlements else "",
            code="subscription_inactive",
            now=now,
        )
        raise errors.SubscriptionInactive(
            f"Your team's subscription is not active (status: {status}). Update billing to continue.",
        )
    return entitlements


def known_models() -> dict[str, date]:
    """Every active model id with its release date."""
    return _models_cache.get_or_load(
        "all", lambda: dict(language_model_list_active().values_list("model_id", "released_on"))
    )


def license_required_from(*, team_id: int) -> date | None:
    """The licence gate registered in usage.extensions, cached per process (a change of the team's
    agreement is seen within TIERLAB_AUTH_CACHE_SECONDS: the invalidation feed, core/invalidation.py)."""
    return _license_cache.get_or_load(team_id, lambda: extensions.license_required_from(team_id=team_id))


def model_check(*, caller: Caller, model: str) -> None:
    if model not in caller.entitlements.allowed_models:
        if model not in known_models():
            raise errors.ModelNotFound(f"The model '{model}' does not exist.", param="model")
        raise errors.ModelNotAllowed(
            f"The model '{model}' is not included in your tier ({caller.entitlements.tier_slug}). Upgrade to use it.",
            param="model",
        )
    required_from = license_required_from(team_id=caller.team_id)
    if required_from is not None:
        released_on = known_models().get(model)
        if released_on is not None and released_on >= required_from:
            raise errors.LicenseRequired(
                f"The model '{model}' was released on {released_on:%Y-%m-%d}, after your products passed "
                f"{settings.TIERLAB_LICENSE_MAU_THRESHOLD:,} monthly active users: it needs a licence agreement. "
                "Contact TierLab to request one.",
                param="model",
            )


def limits_for(*, entitlements: Entitlements, now: datetime) -> tuple[Limit, ...]:
    minute_start, minute_end = minute_window(now)
    day_start, day_end = day_window(now)
    period_start, period_end = entitlements.period_at(now)
    capped = entitlements.spend_capped_tokens
    return (
        Limit(LimitName.MONTHLY_TOKENS, entitlements.monthly_tokens, period_start, period_end,
              enforced=not entitlements.bills_overage)
        if capped is None
        else Limit(LimitName.MONTHLY_TOKENS, capped, period_start, period_end),
        Limit(LimitName.REQUESTS_PER_MINUTE, entitlements.requests_per_minute, minute_start, minute_end),
        Limit(LimitName.TOKENS_PER_MINUTE, entitlements.tokens_per_minute, minute_start, minute_end),
        Limit(LimitName.REQUESTS_PER_DAY, entitlements.requests_per_day, day_start, day_end),
    )  # fmt: skip


def rate_limit_headers(*, limits: tuple[Limit, ...], used: dict[LimitName, int], now: datetime) -> dict[str, str]:
    """OpenAI-style ``x-ratelimit-*`` headers for the per-minute request and token windows (and the
    daily and monthly ones under their own names). Unlimited limits are left out."""
    headers: dict[str, str] = {}
    names = {
        LimitName.REQUESTS_PER_MINUTE: "requests",
        LimitName.TOKENS_PER_MINUTE: "tokens",
        LimitName.REQUESTS_PER_DAY: "requests-day",
        LimitName.MONTHLY_TOKENS: "tokens-month",
    }
    for limit in limits:
        if limit.capacity is None:
            continue
        suffix = names[limit.name]
        headers[f"x-ratelimit-limit-{suffix}"] = str(limit.capacity)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(max(0, limit.capacity - used.get(limit.name, 0)))
        headers[f"x-ratelimit-reset-{suffix}"] = f"{limit.seconds_until_reset(now)}s"
    return headers


# The limits of each team's current minute, reused by every request of that minute (the per-minute
# window is the shortest; the entitlements object changes when they are reloaded). The Redis backend
# keeps its script arguments per limits object, so this also saves rebuilding those per request.
_current_limits: dict[int, tuple[Entitlements, datetime, tuple[Limit, ...]]] = {}


def limits_current(*, entitlements: Entitlements, now: datetime) -> tuple[Limit, ...]:
    """``limits_for``, memoised per team for the minute containing ``now``."""
    minute_start = now.replace(second=0, microsecond=0)
    entry = _current_limits.get(entitlements.team_id)
    if entry is not None and entry[0] is entitlements and entry[1] == minute_start:
        return entry[2]
    limits = limits_for(entitlements=entitlements, now=now)
    _current_limits.pop(entitlements.team_id, None)  # to the end: the dict stays oldest first
    while len(_current_limits) >= DEFAULT_MAX_ENTRIES:  # bounded: one entry per active team, oldest out
        with contextlib.suppress(KeyError, StopIteration, RuntimeError):  # another thread got there first
            del _current_limits[next(iter(_current_limits))]
    _current_limits[entitlements.team_id] = (entitlements, minute_start, limits)
    return limits


def admit(
    *,
    caller: Caller,
    model: str,
    request_id: str,
    tokens: int,
    now: datetime,
    check_model: bool = True,
    request_id_is_new: bool = False,
    request_hash: str = "",
) -> Admission:
    """Check the model and reserve ``tokens`` (prompt + maximum completion) against every limit.
    Raises the 4xx the client should see if the request may not run (409 for a client id recorded
    with a different ``request_hash``). ``check_model`` is False for the moderation model, which every
    tier may call. ``request_id_is_new``: the id was generated here (the client sent none), so it
    cannot be a retry."""
    if check_model:
        model_check(caller=caller, model=model)
    limits = limits_current(entitlements=caller.entitlements, now=now)
    with _quota_backend_answering():
        decision = get_quota_backend().reserve(
            team_id=caller.team_id,
            request_id=request_id,
            limits=limits,
            tokens=tokens,
            now=now,
            request_id_is_new=request_id_is_new,
            request_hash=request_hash,
        )
    _raise_if_refused(caller=caller, decision=decision, limits=limits, now=now)
    return Admission(caller=caller, request_id=request_id, model=model, limits=limits, decision=decision)


def admit_and_record(
    *,
    caller: Caller,
    model: str,
    request_id: str,
    tokens: int,
    prompt_tokens: int,
    completion_tokens: int,
    now: datetime,
    request_id_is_new: bool = False,
    request_hash: str = "",
    check_model: bool = True,
) -> Admission:
    """``admit`` and ``settle`` in one step, for a request whose output is already computed (a
    non-streaming completion, a moderation): checked against every limit with ``tokens`` (prompt +
    maximum completion, exactly as ``admit`` reserves), consumed and recorded at the actual tokens. One
    quota backend call (one Redis round trip, one database transaction) instead of two."""
    if check_model:
        model_check(caller=caller, model=model)
    limits = limits_current(entitlements=caller.entitlements, now=now)
    event = UsageEvent(
        request_id=request_id,
        team_id=caller.team_id,
        api_key_id=caller.key_id,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        created_at=now,
        partner_id=caller.partner_id,
        request_hash=request_hash,
    )
    with _quota_backend_answering():
        decision = get_quota_backend().consume(
            team_id=caller.team_id,
            request_id=request_id,
            limits=limits,
            tokens=tokens,
            event=event,
            now=now,
            request_id_is_new=request_id_is_new,
        )
    _raise_if_refused(caller=caller, decision=decision, limits=limits, now=now)
    return Admission(caller=caller, request_id=request_id, model=model, limits=limits, decision=decision)


@contextlib.contextmanager
def _quota_backend_answering() -> Iterator[None]:
    try:
        yield
    except QuotaBackendUnavailable as error:
        logger.warning("quota backend unavailable: %s", error)
        raise errors.QuotaBackendUnavailable(
            "The quota service is not answering right now, so this request was not run (and not counted). "
            f"Retry in {QUOTA_UNAVAILABLE_RETRY_AFTER_SECONDS} s.",
            retry_after=QUOTA_UNAVAILABLE_RETRY_AFTER_SECONDS,
        ) from error


def _raise_if_refused(*, caller: Caller, decision: Decision, limits: tuple[Limit, ...], now: datetime) -> None:
    if decision.in_progress:
        raise errors.RequestInProgress(
            "A request with this X-Request-Id is still in progress. Retry once it has finished: it is then "
            "answered again without being counted twice.",
            param="X-Request-Id",
            retry_after=IN_PROGRESS_RETRY_AFTER_SECONDS,
        )
    if decision.reused:
        raise errors.RequestIdReused(
            "This X-Request-Id was already used for a different request (within the last "
            f"{settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS // 3600} h). Reuse an id only to retry the same "
            "request; send a new id for a new one.",
            param="X-Request-Id",
        )
    if not decision.allowed:
        refusals.refusal_record(
            team_id=caller.team_id, tier_slug=caller.entitlements.tier_slug, code=decision.code or "", now=now
        )
        headers = rate_limit_headers(limits=limits, used=decision.used, now=now)
        headers["Retry-After"] = str(decision.retry_after)
        limit = next(lim for lim in limits if lim.name == decision.denied)
        if decision.denied is LimitName.MONTHLY_TOKENS and caller.entitlements.spend_capped_tokens is not None:
            raise errors.QuotaExceeded(
                f"Your monthly spend cap of {caller.entitlements.spend_cap_cents / 100:,.2f} "
                f"{caller.entitlements.currency.upper()} is reached. It renews in {decision.retry_after} s; "
                "raise or remove the cap on your dashboard to continue.",
                retry_after=decision.retry_after,
                headers=headers,
            )
        if decision.denied is LimitName.MONTHLY_TOKENS:
            raise errors.QuotaExceeded(
                f"You have used your tier's {limit.capacity:,} tokens for this period. It renews in "
                f"{decision.retry_after} s; upgrade your tier for more.",
                retry_after=decision.retry_after,
                headers=headers,
            )
        raise errors.RateLimited(
            f"Rate limit reached: {limit.capacity:,} {decision.denied.value.replace('_', ' ')}. "
            f"Retry in {decision.retry_after} s.",
            retry_after=decision.retry_after,
            headers=headers,
        )


def settle(*, admission: Admission, prompt_tokens: int, completion_tokens: int, now: datetime) -> bool:
    """Record the admitted request with its actual tokens (exactly once) and correct the reservation.
    False when it is certainly not recorded: the reservation was swept before, or the backend failed
    and changed nothing (a database transaction rolled back; the sweeper refunds the reservation). A
    stream settles before its closing events and then ends with an error event (usage/model_api.py).
    A backend that failed is logged, not raised; a Redis settle that timed out may still run late and
    record, so the answer stands (True), and if it never runs the sweeper refunds the reservation."""
    reservation: Reservation | None = admission.decision.reservation
    if reservation is None:  # a replayed duplicate: already recorded, nothing was reserved
        return True
    event = UsageEvent(
        request_id=admission.request_id,
        team_id=admission.caller.team_id,
        api_key_id=admission.caller.key_id,
        model=admission.model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        created_at=now,
        partner_id=admission.caller.partner_id,
        request_hash=reservation.request_hash,
    )
    try:
        recorded = get_quota_backend().settle(reservation=reservation, event=event)
    except QuotaBackendUnavailable as error:
        logger.error("settle of request %s of team %s failed: %s", event.request_id, event.team_id, error)
        return error.may_have_run
    if not recorded:
        logger.error(
            "request %s of team %s settled after its reservation was swept: not recorded",
            event.request_id,
            event.team_id,
        )
    return recorded


def used_after(*, admission: Admission, tokens_delta: int) -> dict[LimitName, int]:
    """Each limit's count after an admitted request, from the counts its reservation returned, corrected
    by the tokens settled back (``tokens_delta`` = actual - reserved; usually negative)."""
    used = dict(admission.decision.used)
    for name in (LimitName.TOKENS_PER_MINUTE, LimitName.MONTHLY_TOKENS):
        if name in used:
            used[name] = max(0, used[name] + tokens_delta)
    return used


def headers_after(*, admission: Admission, tokens_delta: int, now: datetime) -> dict[str, str]:
    """Rate-limit headers for an admitted request (``used_after``)."""
    used = used_after(admission=admission, tokens_delta=tokens_delta)
    return rate_limit_headers(limits=admission.limits, used=used, now=now)


def metering_caches_clear() -> None:
    """Forget the cached model list, licence gates and buffered refusal counts (tests, scripts)."""
    _models_cache.clear()
    _license_cache.clear()
    _channel_cache.clear()
    _current_limits.clear()
    refusals.refusal_counts_discard()
