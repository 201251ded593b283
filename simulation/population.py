"""The synthetic population: who arrives when, how much each team asks of the model API, and how the
limits of its tier answer that in aggregate.

Randomness: every stream is a ``random.Random`` of its own, seeded from (run seed, owner), never the
global ``random`` and never the clock: one stream per segment's arrivals, one per team, one per
partner. A team's behaviour therefore depends only on the seed, its own stream and its own state, so
the same team does the same things whether it is simulated with everyone else or in a shard of its own
(``--workers``), and the same scenario and seed give the same run. (String seeds are hashed with
SHA-512 by ``random.seed``, the same in every process whatever PYTHONHASHSEED is.)

Traffic is simulated per team-day in aggregate, not request by request (10,000 teams x a year is
3.65 million team-days; a request each would be billions of requests). The aggregation, stated:
- A team's requests on a day: its segment's ``requests_per_day``, times its own lognormal scale
  (``team_variation``), times ``(1 + growth_per_month)`` to the months since it arrived, times
  ``weekend_factor`` on Saturdays and Sundays, times a day-to-day lognormal (``daily_variation``, mean
  1); rounded stochastically to a whole number. Every request has ``tokens_per_request`` tokens,
  ``prompt_share`` of them prompt.
- The day's requests are spread evenly over ``active_hours``. The tier's limits are the ones the model
  API enforces (``usage.metering.limits_for``: the same spend-capped monthly allowance, overage left
  unenforced), applied to the day in aggregate: per-minute limits admit at most their capacity in
  each active minute, the daily limit its capacity, the monthly allowance what is left of it in the
  period. Refused requests are reported under the code the model API would give first (its refusal
  order: ``insufficient_quota`` when the monthly allowance is what runs out, else
  ``rate_limit_exceeded``); a team whose subscription is not active (past due beyond the grace,
  suspended) gets ``subscription_inactive`` for all of them.
- The admitted requests are stored through ``usage.services.usage_records_create_new`` as one usage
  record per team for each run of days from Monday to Sunday at most, dated at midnight UTC of its
  first day (request id ``sim-YYYYMMDD``), cut short at a month's end, at the team's billing period
  end and when its tier or model changes; billing's period close prices overage from those records.
  Every clock event of the run (sign-ups, changes, period ends, trials, dunning retries) happens at
  midnight UTC, so a record never straddles a billing period or a calendar month.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import random
import zlib
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING

from usage.quotas.base import UNLIMITED, LimitName

if TYPE_CHECKING:
    from accounts.models import Team
    from simulation.scenario import Segment
    from tiers.selectors import Entitlements
    from usage.quotas.base import Limit

DAYS_PER_MONTH = 30.4375  # growth compounds by calendar time: 365.25 / 12 days a month
REFUSAL_CODES = ("insufficient_quota", "rate_limit_exceeded", "subscription_inactive")


def stream(seed: int, *owner: object) -> random.Random:
    """The random stream of one owner (a segment's arrivals, a team, a partner) in a run."""
    return random.Random("/".join(map(str, (seed, *owner))))  # noqa: S311 - a simulation, not a secret


def shard_of(key: str, shards: int) -> int:
    """Which of ``shards`` simulates the team ``key`` (stable across processes: CRC-32, not hash())."""
    return zlib.crc32(key.encode()) % shards


@functools.lru_cache(maxsize=4096)
def daily_probability(per_month: float, days_in_month: int) -> float:
    """The per-day probability that makes ``per_month`` over a month of ``days_in_month`` days."""
    per_month = min(max(per_month, 0.0), 1.0)
    if per_month >= 1.0:
        return 1.0
    return 1.0 - (1.0 - per_month) ** (1.0 / days_in_month)


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw: Knuth's product of uniforms for small means, a rounded normal for large ones."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


_NORMAL = NormalDist()


def lognormal_of(u: float, sigma: float) -> float:
    """The lognormal factor with mean 1 and log-sigma ``sigma`` at quantile ``u`` (one uniform per
    draw, by the inverse CDF: the draws stay aligned across runs, see SimTeam.draw_day)."""
    if sigma <= 0:
        return 1.0
    return math.exp(sigma * _NORMAL.inv_cdf(min(max(u, 1e-12), 1 - 1e-12)) - sigma * sigma / 2)


def lognormal_unit(rng: random.Random, sigma: float) -> float:
    """A lognormal factor with mean 1 from ``rng`` (drawing nothing when ``sigma`` is 0)."""
    if sigma <= 0:
        return 1.0
    return lognormal_of(rng.random(), sigma)


def whole(rng: random.Random, value: float) -> int:
    """``value`` rounded up with the probability of its fraction: whole requests with the right mean."""
    floor = math.floor(value)
    return floor + (1 if rng.random() < value - floor else 0)


@dataclass
class Caps:
    """What the tier's limits admit, for one team in one quota period: the effective capacities of
    ``usage.metering.limits_for`` (UNLIMITED where there is no limit or it is not enforced)."""

    period_start: dt.datetime
    period_end: dt.datetime
    monthly_tokens: int
    requests_per_minute: int
    tokens_per_minute: int
    requests_per_day: int

    @classmethod
    def of(cls, limits: tuple[Limit, ...]) -> Caps:
        by_name = {limit.name: limit for limit in limits}
        month = by_name[LimitName.MONTHLY_TOKENS]
        return cls(
            period_start=month.window_start,
            period_end=month.window_end,
            monthly_tokens=month.effective_capacity,
            requests_per_minute=by_name[LimitName.REQUESTS_PER_MINUTE].effective_capacity,
            tokens_per_minute=by_name[LimitName.TOKENS_PER_MINUTE].effective_capacity,
            requests_per_day=by_name[LimitName.REQUESTS_PER_DAY].effective_capacity,
        )


@dataclass
class DayOutcome:
    admitted: int
    refused: int
    code: str  # the refusal code of ``refused`` ("" when nothing was refused)


def admit_day(
    *, requests: int, tokens_per_request: int, active_minutes: int, caps: Caps, period_tokens: int
) -> DayOutcome:
    """One team-day against its limits, in aggregate (see the module docstring)."""
    if requests <= 0:
        return DayOutcome(0, 0, "")
    rate = min(
        caps.requests_per_minute * active_minutes,
        (caps.tokens_per_minute // tokens_per_request) * active_minutes,
    )
    others = min(requests, rate, caps.requests_per_day)
    if caps.monthly_tokens >= UNLIMITED:
        admitted, code = others, "rate_limit_exceeded"
    else:
        room = max(0, caps.monthly_tokens - period_tokens) // tokens_per_request
        admitted = min(others, room)
        code = "insufficient_quota" if room < others else "rate_limit_exceeded"
    refused = requests - admitted
    return DayOutcome(admitted, refused, code if refused else "")


# The uniforms every team draws every day, in this order, whatever it does with them (SimTeam.draw_day).
NOISE, ROUNDING, CHURN, CARD_FAILS, DOWNGRADE, UPGRADE, CARD_FIX = range(7)


@dataclass
class SimTeam:
    """One synthetic team and what the engine remembers about it between days.

    Common random numbers: the team draws the same seven uniforms every day it is a customer (its
    traffic noise and rounding, then one per decision: cancel, card fails, downgrade, upgrade, card
    fixed), used or not. So two runs of scenarios that differ in one parameter give each team the same
    numbers on the same day: with a price 40% more likely to make it cancel, a team cancels on the
    first day its number falls under the higher probability, never later than in the baseline. The
    difference between two runs is then the parameter's effect, not the noise of two samples. Rare
    one-off choices (a trial's conversion, a spend cap, a refund) draw from ``once``.
    """

    key: str
    seed: int
    segment: Segment
    rng: random.Random
    arrival: dt.date
    scale: float
    card: str  # the payment method it brings to its first checkout
    draws: tuple[float, ...] = ()
    team: Team | None = None
    entitlements: Entitlements | None = None
    caps: Caps | None = None
    period_tokens: int = 0  # tokens counted in the quota window that starts at period_start
    period_start: dt.datetime | None = None
    model: str = ""
    refused_yesterday: bool = False
    near_limit: bool = False
    churning: bool = False  # cancelled: leaves when the cancel takes effect
    downgrade_pending: bool = False  # scheduled for the period end
    left: bool = False
    trial_cancel_on: dt.date | None = None
    has_card: bool = False
    refusals: dict[tuple[str, str], int] = field(default_factory=dict)  # (tier, code) -> this month
    # Admitted requests not written yet (engine._usage_flush): since when, with which model.
    pending_requests: int = 0
    pending_since: dt.datetime | None = None
    pending_model: str = ""

    @property
    def active_minutes(self) -> int:
        return int(self.segment.traffic.active_hours * 60)

    @property
    def team_id(self) -> int:
        assert self.team is not None
        return self.team.pk

    def draw_day(self) -> None:
        """Today's uniforms (see the class docstring)."""
        r = self.rng.random
        self.draws = (r(), r(), r(), r(), r(), r(), r())

    def once(self, purpose: str, day: dt.date) -> float:
        """A uniform for a one-off choice, from a stream of its own (the daily draws stay aligned)."""
        return stream(self.seed, "team", self.key, purpose, day).random()

    def requests_on(self, day: dt.date) -> int:
        """Requests the team sends on ``day`` (from today's draws; see the module docstring)."""
        traffic = self.segment.traffic
        months = (day - self.arrival).days / DAYS_PER_MONTH
        mean = traffic.requests_per_day * self.scale * (1.0 + traffic.growth_per_month) ** months
        if day.weekday() >= 5:
            mean *= traffic.weekend_factor
        value = mean * lognormal_of(self.draws[NOISE], traffic.daily_variation)
        floor = math.floor(value)
        return floor + (1 if self.draws[ROUNDING] < value - floor else 0)


def arrivals_schedule(*, seed: int, segment: Segment, start: dt.date, end: dt.date) -> list[tuple[dt.date, int]]:
    """(day, how many teams arrive) for every day of [start, end) with arrivals: ``initial_teams`` on
    the first day, then a Poisson number a day with the segment's monthly rate spread over each
    calendar month's days."""
    import calendar

    rng = stream(seed, segment.name, "arrivals")
    days: list[tuple[dt.date, int]] = []
    day = start
    while day < end:
        count = segment.initial_teams if day == start else 0
        per_day = segment.arrivals_per_month / calendar.monthrange(day.year, day.month)[1]
        count += poisson(rng, per_day)
        if count:
            days.append((day, count))
        day += dt.timedelta(days=1)
    return days


def team_new(*, seed: int, segment: Segment, ordinal: int, arrival: dt.date) -> SimTeam:
    """The ``ordinal``-th team of ``segment``, with its own stream; its card and scale are its first draws."""
    key = f"{segment.name}-{ordinal}"
    rng = stream(seed, "team", key)
    card = "pm_card_chargeCustomerFail" if rng.random() < segment.failing_card_share else "pm_card_visa"
    scale = lognormal_of(rng.random(), segment.traffic.team_variation)
    return SimTeam(key=key, seed=seed, segment=segment, rng=rng, arrival=arrival, scale=scale, card=card)
