from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.selectors import team_for_request
from tiers.selectors import subscription_current, tier_list_public

if TYPE_CHECKING:
    pass


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "tiers/home.html", {"tiers": tier_list_public()})


def pricing(request: HttpRequest) -> HttpResponse:
    team = team_for_request(request) if request.user.is_authenticated else None
    subscription = subscription_current(team=team) if team is not None else None
    context = {
        "tiers": tier_list_public(),
        # The signed-in team's tier is marked on its card ("Your current tier"), even when it is not a
        # public tier (then it is simply not on the page).
        "current_tier_slug": subscription.tier.slug if subscription else None,
        "support_email": settings.TIERLAB_SUPPORT_EMAIL,
    }
    return render(request, "tiers/pricing.html", context)
