"""The quota interface: value objects and the backend contract.

Every billable limit of a request is checked and consumed in ONE atomic step (``reserve``), so N
clients racing for a remaining quota of Q never get more than Q admitted. Tokens are reserved up
front (prompt + max completion tokens), then ``settle`` corrects the reservation to the actual tokens
and records the usage event exactly once; ``refund`` gives a reservation back when the request fails.
A request whose output is known before it is admitted does both at once (``consume``).

A reservation is stored with its request id until it is settled or refunded. One that is neither
(its process crashed, its connection was lost) is refunded by ``sweep`` once it is older than
``settings.TIERLAB_RESERVATION_TIMEOUT_SECONDS``, longer than any request can take; so the counters
always come back to what the usage records say. A backend that cannot answer in time raises
``QuotaBackendUnavailable``; whatever the unanswered call would have done then either did not happen
or is a reservation that ``sweep`` refunds.

Request ids (DESIGN.md "Request ids", like Stripe's idempotency keys). A client's id, per team, is:
- free: never used, or its request was refused, refunded or swept, or it was recorded more than
  ``settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS`` ago. A request with it is checked against every
  limit like any other, and consumes.
- pending, from the moment it is reserved until it is settled, refunded or swept: another request
  with it is refused, nothing consumed, as ``in_progress`` (the same request: retry once the first has
  finished) or ``reused`` (a different request).
- recorded, for the retention after its usage was recorded: the same request (same request hash) is
  ``duplicate``, served again and counted nothing whatever the limits say (it is the same, already
  counted request); a different request is ``reused``.
Server-generated ids cannot repeat: backends need not check them.

Windows are fixed and aligned: the minute (UTC, :00 to :00), the UTC day, and the subscription's
current billing period for monthly tokens. Fixed windows are what a single atomic counter update can
enforce exactly; their cost is the known burst at a window edge (up to twice the per-minute limit
across two adjacent minutes), which we accept as OpenAI's and Stripe's fixed windows do.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta


class LimitName(enum.StrEnum):
    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"
    REQUESTS_PER_DAY = "requests_per_day"
    MONTHLY_TOKENS = "monthly_tokens"

    @property
    def unit(self) -> str:
        return "requests" if self in (LimitName.REQUESTS_PER_MINUTE, LimitName.REQUESTS_PER_DAY) else "tokens"

    @property
    def refusal_code(self) -> str:
        # Per-minute/day windows: slow down and retry. The monthly quota: out of quota until the period ends.
        return "insufficient_quota" if self is LimitName.MONTHLY_TOKENS else "rate_limit_exceeded"


# Stands in for "no limit" in the atomic comparisons: larger than any count we can reach.
UNLIMITED = 2**62


@dataclass(frozen=True)
class Limit:
    """One limit on one team, for the window containing ``now`` when it was built.

    ``capacity`` None means unlimited. ``enforced`` False means counted but never refused (the monthly
    quota of a tier that bills overage).
    """

    name: LimitName
    capacity: int | None
    window_start: datetime
    window_end: datetime
    enforced: bool = True

    def __post_init__(self) -> None:
        if self.capacity is not None and self.capacity < 0:
            raise ValueError(f"{self.name}: capacity must be >= 0, got {self.capacity}")
        if self.window_end <= self.window_start:
            raise ValueError(f"{self.name}: window must end after it starts")
        if self.window_start.tzinfo is None:
            raise ValueError(f"{self.name}: window bounds must be timezone-aware")

    @property
    def effective_capacity(self) -> int:
        """What the atomic check compares against."""
        if self.capacity is None or not self.enforced:
            return UNLIMITED
        return self.capacity

    def cost(self, *, tokens: int) -> int:
        """What one request with ``tokens`` tokens consumes of this limit."""
        return 1 if self.name.unit == "requests" else tokens

    def seconds_until_reset(self, now: datetime) -> int:
        return max(1, int((self.window_end - now).total_seconds() + 0.999))


def minute_window(now: datetime) -> tuple[datetime, datetime]:
    start = now.replace(second=0, microsecond=0)
    return start, start + timedelta(minutes=1)


def day_window(now: datetime) -> tuple[datetime, datetime]:
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


@dataclass(frozen=True)
class UsageEvent:
    """One admitted request, as it will be stored as a ``UsageRecord`` (unique on team + request_id)."""

    request_id: str
    team_id: int
    api_key_id: int | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    created_at: datetime
    partner_id: int | None = None
    # SHA-256 of the endpoint and the canonical body (usage.metering.request_hash); "" when the id was
    # generated for this request. A reused client id is answered again only for the same hash.
    request_hash: str = ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class QuotaBackendUnavailable(Exception):
    """The backend did not answer in time (refused, timed out, or its database failed). Nothing the
    caller may rely on happened: the request must not be served (the model API answers 503). A reserve
    that the backend runs after the caller gave up does nothing (Redis: see its deadline) or leaves a
    reservation that ``sweep`` refunds. ``may_have_run``: False when the call certainly changed nothing
    (its database transaction was rolled back), True when it may still run (a Redis script sent)."""

    def __init__(self, message: str, *, may_have_run: bool = True) -> None:
        super().__init__(message)
        self.may_have_run = may_have_run


@dataclass(frozen=True)
class Reservation:
    team_id: int
    request_id: str
    tokens: int
    limits: tuple[Limit, ...]
    reserved_at: datetime
    request_hash: str = ""
    # The id was generated for this request: settle neither checks nor remembers it.
    request_id_is_new: bool = False
    # The backend's handle on the stored reservation (what settle, refund and sweep remove).
    token: str = ""


@dataclass(frozen=True)
class Decision:
    """The outcome of ``reserve``.

    allowed: admitted; ``reservation`` must then be settled or refunded.
    duplicate: the same request (same request hash) with this request id was already admitted and
        recorded for this team: serve it again, but nothing was consumed and nothing must be settled
        (``reservation`` is None).
    reused: not allowed, because this request id is pending or recorded with a different request:
        nothing was consumed; the client must send a new id.
    in_progress: not allowed, because the same request with this id is still pending (reserved, not
        settled yet): nothing was consumed; retry once it has finished.
    Otherwise refused by ``denied``: ``code`` says why and ``retry_after`` (seconds) when to retry.
    ``used`` maps each limit to its count in the current window after this decision.
    """

    allowed: bool
    reservation: Reservation | None = None
    duplicate: bool = False
    reused: bool = False
    in_progress: bool = False
    denied: LimitName | None = None
    retry_after: int = 0
    used: dict[LimitName, int] = field(default_factory=dict)

    @property
    def code(self) -> str | None:
        return self.denied.refusal_code if self.denied else None

    # The decisions every backend makes, built one way.
    @classmethod
    def reserved(
        cls,
        *,
        team_id: int,
        request_id: str,
        tokens: int,
        limits: Sequence[Limit],
        now: datetime,
        used: dict,
        request_hash: str = "",
        request_id_is_new: bool = False,
        token: str = "",
    ) -> Decision:
        """Admitted: ``tokens`` are reserved in every limit of ``limits`` until settled or refunded."""
        reservation = Reservation(
            team_id=team_id,
            request_id=request_id,
            tokens=tokens,
            limits=tuple(limits),
            reserved_at=now,
            request_hash=request_hash,
            request_id_is_new=request_id_is_new,
            token=token,
        )
        return cls(allowed=True, reservation=reservation, used=used)

    @classmethod
    def repeated(cls, *, used: dict) -> Decision:
        """The same request with this id was admitted and recorded before: serve it again, consume nothing."""
        return cls(allowed=True, duplicate=True, used=used)

    @classmethod
    def id_reused(cls, *, used: dict) -> Decision:
        """The request id is pending or recorded with a different request: refuse it, consume nothing."""
        return cls(allowed=False, reused=True, used=used)

    @classmethod
    def pending(cls, *, used: dict) -> Decision:
        """The same request with this id is still in progress: refuse it, consume nothing."""
        return cls(allowed=False, in_progress=True, used=used)

    @classmethod
    def held(cls, *, held_hash: str | None, pending: bool, request_hash: str, used: dict) -> Decision:
        """The answer for a request id that is held, pending or recorded, with ``held_hash``."""
        if held_hash != request_hash:
            return cls.id_reused(used=used)
        return cls.pending(used=used) if pending else cls.repeated(used=used)

    @classmethod
    def refused(cls, *, limits: Sequence[Limit], used: dict, tokens: int, now: datetime) -> Decision | None:
        """The refusal that the counts ``used`` explain (see ``refusal``); None if every limit has room."""
        denied, retry_after = refusal(limits, used, tokens=tokens, now=now)
        if denied is None:
            return None
        return cls(allowed=False, denied=denied, retry_after=retry_after, used=used)


class QuotaBackend(abc.ABC):
    """Check-and-consume of every limit of a request at once. Implementations must be safe under
    concurrency across threads and processes (web workers on several machines). Every method may raise
    ``QuotaBackendUnavailable``."""

    @abc.abstractmethod
    def reserve(
        self,
        *,
        team_id: int,
        request_id: str,
        limits: Sequence[Limit],
        tokens: int,
        now: datetime,
        request_id_is_new: bool = False,
        request_hash: str = "",
    ) -> Decision:
        """Atomically: if every enforced limit has room for this request (1 request, ``tokens`` tokens),
        consume it from all of them, store the reservation with its request id (now pending) and return
        an allowed decision; otherwise consume nothing and return the first limit that refused (monthly
        quota before per-minute/day windows, so "out of quota" is never reported as "slow down").

        The request id is checked in the same atomic step (see the module docstring): pending →
        ``Decision.pending`` or ``Decision.id_reused``; recorded within the retention → ``Decision.repeated``
        (nothing consumed, whatever the limits say) or ``Decision.id_reused``; otherwise free.

        ``request_id_is_new``: the id was generated for this request (the client sent none), so it
        cannot be a retry; a backend may skip its checks."""

    @abc.abstractmethod
    def settle(self, *, reservation: Reservation, event: UsageEvent) -> bool:
        """Correct the reserved tokens to ``event.total_tokens`` (in the same windows that were reserved,
        if they are still current), record ``event`` exactly once and bind the request id to it for the
        retention; all at once. Returns False, changing nothing, if the reservation is gone: it was swept
        (it outlived ``TIERLAB_RESERVATION_TIMEOUT_SECONDS``) or refunded, so its counts were given back
        and the request stays unrecorded."""

    @abc.abstractmethod
    def refund(self, *, reservation: Reservation) -> None:
        """Give back everything ``reservation`` consumed (the request failed before producing output)
        and free its request id. Refunding twice, or after a settle or sweep, does nothing."""

    @abc.abstractmethod
    def consume(
        self,
        *,
        team_id: int,
        request_id: str,
        limits: Sequence[Limit],
        tokens: int,
        event: UsageEvent,
        now: datetime,
        request_id_is_new: bool = False,
    ) -> Decision:
        """``reserve`` (checked with ``tokens``, the prompt plus maximum completion) and ``settle`` to
        ``event``'s actual tokens as ONE atomic step, for a request whose output is known before it is
        admitted (a non-streaming completion): either everything (counters, record, request id) or
        nothing happens. Admits and refuses exactly as reserve would; an allowed decision has no
        reservation to settle or refund. The request hash is ``event.request_hash``."""

    @abc.abstractmethod
    def sweep(self, *, now: datetime) -> int:
        """Refund every reservation reserved before ``now - TIERLAB_RESERVATION_TIMEOUT_SECONDS`` that
        is neither settled nor refunded, and free its request id (a periodic task's job). Returns how
        many were refunded. Safe to run concurrently with itself and with settles: each reservation is
        given back at most once, and a settle racing it either records or finds it gone."""

    @abc.abstractmethod
    def used(self, *, team_id: int, limits: Sequence[Limit]) -> dict[LimitName, int]:
        """Current counts of ``limits``' windows, without consuming anything."""


# The order in which refusals are reported: out of quota first (retrying soon cannot help), then the
# window that resets last, so the reported retry_after is the one worth waiting for.
REFUSAL_ORDER = (
    LimitName.MONTHLY_TOKENS,
    LimitName.REQUESTS_PER_DAY,
    LimitName.REQUESTS_PER_MINUTE,
    LimitName.TOKENS_PER_MINUTE,
)


def refusal(
    limits: Sequence[Limit], used: Mapping[LimitName, int], *, tokens: int, now: datetime
) -> tuple[LimitName | None, int]:
    """Explain a refusal: which of ``limits`` (with counts ``used``) has no room for one request of
    ``tokens`` tokens, in ``REFUSAL_ORDER``, and retry_after: seconds until every refusing window has
    reset. ``(None, 0)`` if all have room. Backends decide atomically; this only names the reason."""
    refusing = [
        limit for limit in limits if used.get(limit.name, 0) + limit.cost(tokens=tokens) > limit.effective_capacity
    ]
    if not refusing:
        return None, 0
    refusing.sort(key=lambda limit: REFUSAL_ORDER.index(limit.name))
    return refusing[0].name, max(limit.seconds_until_reset(now) for limit in refusing)
