"""The quota interface: value objects and the backend contract.

Every billable limit of a request is checked and consumed in ONE atomic step (``reserve``), so N
clients racing for a remaining quota of Q never get more than Q admitted. Tokens are reserved up
front (prompt + max completion tokens), then ``settle`` corrects the reservation to the actual tokens
and records the usage event exactly once; ``refund`` gives a reservation back when the request fails.

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


@dataclass(frozen=True)
class Decision:
    """The outcome of ``reserve``.

    allowed: admitted; ``reservation`` must then be settled or refunded.
    duplicate: the same request (same request hash) with this request id was already admitted and
        recorded for this team: serve it again, but nothing was consumed and nothing must be settled
        (``reservation`` is None).
    reused: not allowed, because this request id was recorded with a different request (or too long
        ago to be answered again): nothing was consumed; the client must send a new id.
    Otherwise refused by ``denied``: ``code`` says why and ``retry_after`` (seconds) when to retry.
    ``used`` maps each limit to its count in the current window after this decision.
    """

    allowed: bool
    reservation: Reservation | None = None
    duplicate: bool = False
    reused: bool = False
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
        )
        return cls(allowed=True, reservation=reservation, used=used)

    @classmethod
    def repeated(cls, *, used: dict) -> Decision:
        """The same request with this id was admitted and recorded before: serve it again, consume nothing."""
        return cls(allowed=True, duplicate=True, used=used)

    @classmethod
    def id_reused(cls, *, used: dict) -> Decision:
        """The request id was recorded with a different request: refuse it, consume nothing."""
        return cls(allowed=False, reused=True, used=used)

    @classmethod
    def refused(cls, *, limits: Sequence[Limit], used: dict, tokens: int, now: datetime) -> Decision | None:
        """The refusal that the counts ``used`` explain (see ``refusal``); None if every limit has room."""
        denied, retry_after = refusal(limits, used, tokens=tokens, now=now)
        if denied is None:
            return None
        return cls(allowed=False, denied=denied, retry_after=retry_after, used=used)


class QuotaBackend(abc.ABC):
    """Check-and-consume of every limit of a request at once. Implementations must be safe under
    concurrency across threads and processes (web workers on several machines)."""

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
        consume it from all of them and return an allowed decision; otherwise consume nothing and return
        the first limit that refused (monthly quota before per-minute/day windows, so "out of quota" is
        never reported as "slow down").

        Request ids (DESIGN.md "Request ids"), checked in the same atomic step: if a usage event with
        this (team, request id) was recorded within ``settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS``
        with the same ``request_hash``, return ``Decision.repeated`` (served again, nothing consumed,
        whatever the limits say: it is the same, already counted request); if it was recorded with
        another hash, ``Decision.id_reused`` (nothing consumed). Only a recorded request binds its id:
        an id whose request was refused, refunded or not settled yet is admitted like a new one, and
        consumes. A backend may keep a recorded id longer than the retention (the database backend
        keeps it as long as the record: an older reuse is refused, never admitted uncounted).

        ``request_id_is_new``: the id was generated for this request (the client sent none), so it
        cannot be a retry; a backend may skip its duplicate check. Records stay unique on it anyway."""

    @abc.abstractmethod
    def settle(self, *, reservation: Reservation, event: UsageEvent) -> bool:
        """Correct the reserved tokens to ``event.total_tokens`` (in the same windows that were reserved,
        if they are still current) and record ``event`` exactly once. Returns False if a usage event
        with the same (team, request id) was already recorded (a request racing another with its id):
        the whole reservation is given back if that event was the same request (same hash: it is
        counted once); a different request stays counted, so racing ids never skip a limit."""

    @abc.abstractmethod
    def refund(self, *, reservation: Reservation) -> None:
        """Give back everything ``reservation`` consumed (the request failed before producing output)."""

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
        ``event``'s actual tokens as one step, for a request whose output is known before it is admitted
        (a non-streaming completion of the simulated model). Admits and refuses exactly as reserve would;
        an allowed decision has no reservation left to settle or refund. The request hash is
        ``event.request_hash``. Backends may do it in one round trip; this default does the two steps."""
        decision = self.reserve(
            team_id=team_id,
            request_id=request_id,
            limits=limits,
            tokens=tokens,
            now=now,
            request_id_is_new=request_id_is_new,
            request_hash=event.request_hash,
        )
        if decision.allowed and decision.reservation is not None:
            if not self.settle(reservation=decision.reservation, event=event):
                return Decision.repeated(used=decision.used)
            delta = event.total_tokens - tokens
            used = {
                name: max(0, count + delta) if name.unit == "tokens" else count for name, count in decision.used.items()
            }
            return Decision(allowed=True, used=used)
        return decision

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
