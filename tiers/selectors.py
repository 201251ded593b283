from __future__ import annotations

from typing import TYPE_CHECKING

from django.db.models import QuerySet

from tiers.models import Subscription, Tier

if TYPE_CHECKING:
    from accounts.models import Team


def tier_list_public() -> QuerySet[Tier]:
    """Tiers a visitor may choose: public and not archived, with their models, cheapest first."""
    return Tier.objects.filter(is_public=True, is_archived=False).prefetch_related("allowed_models")


def subscription_current(*, team: Team) -> Subscription | None:
    """The team's current (not canceled) subscription; the unique constraint allows at most one."""
    return (
        Subscription.objects.select_related("tier", "pending_tier")
        .filter(team=team)
        .exclude(status=Subscription.Status.CANCELED)
        .first()
    )
