from __future__ import annotations

from decimal import Decimal

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from accounts.decorators import team_page
from accounts.roles import RoleForbidden, TeamAction, role_allows
from core.errors import ApplicationError
from tiers.services import subscription_spend_cap_set
from usage.dashboard import RANGE_CHOICES, dashboard_for_team
from usage.forms import SpendCapForm, UsageRangeForm


@team_page(TeamAction.VIEW)
@require_http_methods(["GET", "POST"])
def dashboard(request: HttpRequest) -> HttpResponse:
    team = request.team
    now = timezone.now()

    cap_form: SpendCapForm | None = None
    if request.method == "POST":
        cap_form = SpendCapForm(request.POST)
        if cap_form.is_valid():
            try:
                subscription_spend_cap_set(
                    team=team, cap_cents=cap_form.cap_cents(), hard=cap_form.hard(), now=now, actor=request.user
                )
            except RoleForbidden:
                raise  # the 403 page (accounts.decorators.team_page)
            except ApplicationError as error:
                cap_form.add_error("amount", error.message)
            else:
                if cap_form.cap_cents() is None:
                    messages.success(request, "Spend cap removed.")
                else:
                    messages.success(request, "Spend cap saved.")
                return redirect(f"{request.path}#spend-cap")

    range_form = UsageRangeForm(request.GET)
    if range_form.is_valid():
        range_key = range_form.range_key()
    else:
        range_key = "period"
        messages.warning(request, "Unknown range: showing this billing period instead.")
        range_form = UsageRangeForm(initial={"range": range_key})

    data = dashboard_for_team(team=team, now=now, range_key=range_key)
    if cap_form is not None and cap_form.errors and not (data.estimate and data.estimate.bills_overage):
        # The form is only drawn on tiers that bill overage; elsewhere its error must still be seen.
        for error in cap_form.errors.get("amount", []):
            messages.error(request, error)
    if cap_form is None and data.estimate is not None:
        cap = data.estimate.spend_cap_cents
        cap_form = SpendCapForm(
            initial={
                "amount": None if cap is None else Decimal(cap) / 100,
                "mode": SpendCapForm.MODE_HARD if data.estimate.spend_cap_hard else SpendCapForm.MODE_NOTIFY,
            }
        )
    context = {
        "team": team,
        "dashboard": data,
        "subscription": data.subscription,
        "range_form": range_form,
        "range_choices": RANGE_CHOICES,
        "cap_form": cap_form,
        # The spend cap is billing's: the other roles see it, without the form.
        "can_manage_billing": role_allows(request.team_role, TeamAction.BILLING_MANAGE),
    }
    return render(request, "usage/dashboard.html", context)
