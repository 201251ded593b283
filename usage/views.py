from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.selectors import team_for_user
from tiers.selectors import subscription_current


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    team = team_for_user(user=request.user)
    subscription = subscription_current(team=team) if team else None
    return render(request, "usage/dashboard.html", {"team": team, "subscription": subscription})
