"""Operator analytics on usage: top customers by tokens and quota refusals by tier.

Read-only selectors for the admin's analytics page (partners/admin_analytics.py, which composes the
whole dashboard in partners/analytics.py). Every figure is one
set-based aggregate over the rollups and statements (never a scan of ``UsageRecord``), so the page
stays fast with thousands of customers. Months, ranges and money follow billing/analytics.py: UTC
calendar months named by their first day, half-open instant ranges, integer cents per currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Sum

from accounts.models import Membership
from usage.models import QuotaRefusalCount, UsageRollup

TOP_CUSTOMERS = 10

# --- Top customers by tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TopCustomer:
    team_id: int
    team_name: str
    owner_email: str
    total_tokens: int
    requests: int


def top_customers_by_tokens(*, start: datetime, end: datetime, limit: int = TOP_CUSTOMERS) -> list[TopCustomer]:
    """The ``limit`` teams that used the most tokens in [start, end), most first (ties: lower team id
    first), with their name and owner's email, tokens and requests.

    Read from the day rollups (``UsageRollup``, granularity day) whose day starts in the range, so a
    range is counted in whole UTC days; usage not folded into the rollups yet (the last minutes) is not
    in it. Every channel counts (direct and through a partner key). Two queries: the ranking, then the
    owners of the ranked teams (the earliest owner membership, should a team have several).
    """
    ranked = list(
        UsageRollup.objects.filter(
            granularity=UsageRollup.Granularity.DAY, bucket_start__gte=start, bucket_start__lt=end
        )
        .values("team_id", "team__name")
        .annotate(tokens=Sum("total_tokens"), n=Sum("requests"))
        .order_by("-tokens", "team_id")[:limit]
    )
    owners: dict[int, str] = {}
    if ranked:
        memberships = (
            Membership.objects.filter(team_id__in=[row["team_id"] for row in ranked], role=Membership.Role.OWNER)
            .order_by("-created_at", "-id")
            .values_list("team_id", "user__email")
        )
        # Newest first, so the earliest owner's email is the one left in the dict.
        owners = dict(memberships)
    return [
        TopCustomer(
            team_id=row["team_id"],
            team_name=row["team__name"],
            owner_email=owners.get(row["team_id"], ""),
            total_tokens=int(row["tokens"] or 0),
            requests=int(row["n"] or 0),
        )
        for row in ranked
    ]


# --- Quota refusals by tier ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TierRefusals:
    tier_slug: str
    by_code: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_code.values())


@dataclass(frozen=True)
class RefusalsReport:
    codes: list[str]  # every refusal code seen in the range, sorted
    tiers: list[TierRefusals]  # most refused first (ties: by slug)

    @property
    def total(self) -> int:
        return sum(t.total for t in self.tiers)

    @property
    def rows(self) -> list[tuple[str, list[int], int]]:
        """(tier slug, counts in ``codes`` order, total) per tier: the table of the page."""
        return [(t.tier_slug, [t.by_code.get(code, 0) for code in self.codes], t.total) for t in self.tiers]


def quota_refusals_by_tier(*, start: datetime, end: datetime) -> RefusalsReport:
    """Model-API requests refused in [start, end), per tier (the tier the team was on at the time, as
    counted) and refusal code (``rate_limit_exceeded``, ``insufficient_quota``, ...). Counted per hour
    (``QuotaRefusalCount``), so the range is in whole UTC hours. One query."""
    rows = (
        QuotaRefusalCount.objects.filter(hour__gte=start, hour__lt=end)
        .values("tier_slug", "code")
        .annotate(n=Sum("count"))
        .order_by("tier_slug", "code")
    )
    by_tier: dict[str, dict[str, int]] = {}
    for row in rows:
        by_tier.setdefault(row["tier_slug"], {})[row["code"]] = int(row["n"] or 0)
    codes = sorted({code for counts in by_tier.values() for code in counts})
    tiers = [TierRefusals(tier_slug=slug, by_code=counts) for slug, counts in by_tier.items()]
    tiers.sort(key=lambda t: (-t.total, t.tier_slug))
    return RefusalsReport(codes=codes, tiers=tiers)
