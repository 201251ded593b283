from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import QuerySet

from core.compiled_query import CompiledFirst
from core.local_cache import InvalidatedCache
from core.periods import subscription_period_at
from tiers.models import LanguageModel, Subscription, Tier

if TYPE_CHECKING:
    from accounts.models import Team


def tier_list_public() -> QuerySet[Tier]:
    """Tiers a visitor may choose: public and not archived, with their models, cheapest first."""
    return Tier.objects.selectable(public_only=True).prefetch_related("allowed_models")


def subscription_current(*, team: Team) -> Subscription | None:
    """The team's current (not canceled) subscription; the unique constraint allows at most one."""
    return Subscription.objects.current().select_related("tier", "pending_tier").filter(team=team).first()


def team_api_access_refusal(*, team: Team) -> str:
    """Why ``team`` may not have API keys, "" if it may: its current tier does not include API access
    (a playground-only consumer tier). A team without a subscription is not refused here: the model API
    refuses its keys as subscription_inactive. Registered as accounts.extensions.api_access_refusal."""
    subscription = subscription_current(team=team)
    if subscription is None or subscription.tier.includes_api_access:
        return ""
    return (
        f"Your team's tier, {subscription.tier.name}, is for the playground only and does not include API "
        "access, so API keys cannot be created. Chat in the playground, or move to a tier with API access."
    )


def language_model_list_active() -> QuerySet[LanguageModel]:
    return LanguageModel.objects.filter(is_active=True)


@dataclass(frozen=True)
class Entitlements:
    """What a team may do on the model API right now: its tier's limits and models, its period."""

    team_id: int
    tier_slug: str
    subscription_status: str
    billing_anchor: datetime
    billing_interval: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    requests_per_day: int | None
    monthly_tokens: int | None
    bills_overage: bool
    allowed_models: frozenset[str]
    past_due_since: datetime | None = None
    price_cents: int = 0
    currency: str = "usd"
    overage_cents_per_million_tokens: int | None = None
    spend_cap_cents: int | None = None
    spend_cap_hard: bool = True
    # The stored period (Subscription.current_period_start/_end): see core.periods.subscription_period_at.
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    # False on a playground-only consumer tier: the model API refuses the team's keys (403
    # api_access_not_included); the playground meters its messages on the same limits.
    includes_api_access: bool = True

    def period_at(self, now: datetime) -> tuple[datetime, datetime]:
        """The quota's monthly window at ``now``: the subscription's billing period (a trial's own)."""
        return subscription_period_at(
            anchor=self.billing_anchor,
            interval=self.billing_interval,
            period_start=self.current_period_start or self.billing_anchor,
            period_end=self.current_period_end or self.billing_anchor,
            now=now,
        )

    def is_active_at(self, now: datetime) -> bool:
        """Trialing and active subscriptions may call the API; past-due ones only during the grace
        period after the first failed charge (TIERLAB_PAST_DUE_GRACE_DAYS)."""
        if self.subscription_status in {"trialing", "active"}:
            return True
        if self.subscription_status == "past_due" and self.past_due_since is not None:
            return now < self.past_due_since + timedelta(days=settings.TIERLAB_PAST_DUE_GRACE_DAYS)
        return False

    @property
    def spend_capped_tokens(self) -> int | None:
        """The period's token allowance under a hard spend cap on a tier that bills overage: the
        included tokens plus as many overage tokens as the cap leaves room for after the tier fee
        (rounded down, so the bill never passes the cap). None when no hard cap applies."""
        if not (self.bills_overage and self.spend_cap_hard and self.spend_cap_cents is not None):
            return None
        price = self.overage_cents_per_million_tokens or 0
        room_cents = max(0, self.spend_cap_cents - self.price_cents)
        if price <= 0:
            return None
        return (self.monthly_tokens or 0) + room_cents * 1_000_000 // price


# Per team, kept for minutes and dropped when the feed says the team's subscription changed
# (core/invalidation.py); a team without a subscription only TIERLAB_AUTH_CACHE_SECONDS.
_entitlements_cache: InvalidatedCache[int, Entitlements | None] = InvalidatedCache(short_misses=True)


@dataclass(frozen=True)
class _TierTerms:
    """What entitlements take from a tier: one per tier and process, shared by its teams' entries."""

    slug: str
    billing_interval: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    requests_per_day: int | None
    monthly_tokens: int | None
    bills_overage: bool
    price_cents: int
    currency: str
    overage_cents_per_million_tokens: int | None
    allowed_models: frozenset[str]
    includes_api_access: bool


# Per tier (a handful of entries): dropped with every entry when a tier or a model changes (the feed).
_tier_terms_cache: InvalidatedCache[int, _TierTerms | None] = InvalidatedCache(team_of=lambda tier_id, terms: None)

# The team's current subscription, compiled once per process (core/compiled_query.py): with thousands
# of active teams the entitlements cache mostly misses, and this is then the only query of a miss.
SUBSCRIPTION_FIELDS = (
    "tier_id",
    "status",
    "billing_anchor",
    "past_due_since",
    "spend_cap_cents",
    "spend_cap_hard",
    "current_period_start",
    "current_period_end",
)
_subscription_query = CompiledFirst(
    lambda team_id: (
        Subscription.objects.current().filter(team_id=team_id).order_by("-created_at").values_list(*SUBSCRIPTION_FIELDS)
    ),
    arity=1,
    ints=1,
)


def _terms_of(tier: Tier, models: frozenset[str]) -> _TierTerms:
    return _TierTerms(
        slug=tier.slug,
        billing_interval=tier.billing_interval,
        requests_per_minute=tier.requests_per_minute,
        tokens_per_minute=tier.tokens_per_minute,
        requests_per_day=tier.requests_per_day,
        monthly_tokens=tier.monthly_tokens,
        bills_overage=tier.bills_overage,
        price_cents=tier.price_cents,
        currency=tier.currency,
        overage_cents_per_million_tokens=tier.overage_cents_per_million_tokens,
        allowed_models=models,
        includes_api_access=tier.includes_api_access,
    )


def _load_tier_terms(tier_id: int) -> _TierTerms | None:
    tier = Tier.objects.filter(pk=tier_id).first()
    if tier is None:
        return None
    return _terms_of(tier, frozenset(tier.allowed_models.filter(is_active=True).values_list("model_id", flat=True)))


def _entitlements_build(team_id: int, terms: _TierTerms, subscription: tuple) -> Entitlements:
    """The one place entitlements are put together: from a tier's terms and the subscription's
    ``SUBSCRIPTION_FIELDS`` (after ``tier_id``), whichever way both were read."""
    status, billing_anchor, past_due_since, spend_cap_cents, spend_cap_hard, period_start, period_end = subscription
    return Entitlements(
        team_id=team_id,
        tier_slug=terms.slug,
        subscription_status=status,
        billing_anchor=billing_anchor,
        billing_interval=terms.billing_interval,
        requests_per_minute=terms.requests_per_minute,
        tokens_per_minute=terms.tokens_per_minute,
        requests_per_day=terms.requests_per_day,
        monthly_tokens=terms.monthly_tokens,
        bills_overage=terms.bills_overage,
        allowed_models=terms.allowed_models,
        past_due_since=past_due_since,
        price_cents=terms.price_cents,
        currency=terms.currency,
        overage_cents_per_million_tokens=terms.overage_cents_per_million_tokens,
        spend_cap_cents=spend_cap_cents,
        spend_cap_hard=spend_cap_hard,
        current_period_start=period_start,
        current_period_end=period_end,
        includes_api_access=terms.includes_api_access,
    )


def _load_entitlements(team_id: int) -> Entitlements | None:
    return _entitlements_from_row(team_id, _subscription_query.first(team_id))


def _entitlements_from_row(team_id: int, row: tuple | None) -> Entitlements | None:
    if row is None or row[0] is None:
        return None
    tier_id = row[0]
    terms = _tier_terms_cache.get_or_load(tier_id, lambda: _load_tier_terms(tier_id))
    if terms is None:  # the tier was deleted between the two reads
        return None
    return _entitlements_build(team_id, terms, tuple(row[1:]))


def _entitlements_of(subscription: Subscription, models: frozenset[str]) -> Entitlements:
    fields = tuple(getattr(subscription, name) for name in SUBSCRIPTION_FIELDS[1:])
    return _entitlements_build(subscription.team_id, _terms_of(subscription.tier, models), fields)


def entitlements_for_teams(*, team_ids: Iterable[int]) -> dict[int, Entitlements | None]:
    """``entitlements_for_team`` for many teams at once, uncached, in two queries (the subscriptions
    with their tiers, the tiers' active models): for callers that reload many teams together (the
    simulator, after each simulated day). None for a team without a current subscription."""
    wanted = set(team_ids)
    found: dict[int, Entitlements | None] = dict.fromkeys(wanted)
    subscriptions = list(Subscription.objects.current().select_related("tier").filter(team_id__in=wanted))
    tier_ids = {subscription.tier_id for subscription in subscriptions}
    models: dict[int, set[str]] = {tier_id: set() for tier_id in tier_ids}
    through = Tier.allowed_models.through.objects.filter(tier_id__in=tier_ids, languagemodel__is_active=True)
    for tier_id, model_id in through.values_list("tier_id", "languagemodel__model_id"):
        models[tier_id].add(model_id)
    for subscription in subscriptions:
        found[subscription.team_id] = _entitlements_of(subscription, frozenset(models[subscription.tier_id]))
    return found


def entitlements_for_team(*, team_id: int) -> Entitlements | None:
    """The team's entitlements (None without a current subscription), cached in-process: a tier or
    subscription change is seen within TIERLAB_AUTH_CACHE_SECONDS (the invalidation feed,
    core/invalidation.py)."""
    return _entitlements_cache.get_or_load(team_id, lambda: _load_entitlements(team_id))


def entitlements_prime(*, team_id: int, subscription: tuple | None, generation: int) -> Entitlements | None:
    """Cache (and return) the team's entitlements from its current subscription's SUBSCRIPTION_FIELDS
    values, read by a caller in a statement of its own (usage.callers: with the API key, in one); None or
    a None ``tier_id`` (an outer join that found no current subscription): no entitlements.
    ``generation``: core.local_cache.cache_generation() before the statement was read."""
    entitlements = _entitlements_from_row(team_id, subscription)
    _entitlements_cache.put(team_id, entitlements, generation=generation)
    return entitlements


def entitlements_cache_clear() -> None:
    _entitlements_cache.clear()
    _tier_terms_cache.clear()
