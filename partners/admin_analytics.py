"""The operator analytics page in the admin (/admin/analytics/): staff only, thin.

It parses the range (``?months=N``), calls one selector (``partners.analytics.operator_dashboard``) and
renders its figures as server-side SVG charts (core/charts.py), each with a table of the same numbers,
so the page loads nothing from the internet and reads without JavaScript.

Included from config/urls.py before the admin's own URLs (``path("admin/analytics/", include(...))``),
so the admin's catch-all never sees the path; ``admin.site.admin_view`` gives it the admin's login
redirect and staff check, and ``each_context`` the admin's header and links.
"""

from __future__ import annotations

from datetime import date

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from billing.analytics import DEFAULT_MONTHS, MAX_MONTHS
from core.charts import ChartSeries, bar_chart_svg
from partners.analytics import CHANNELS, OperatorDashboard, operator_dashboard

URL_NAME = "admin-analytics"
_STATUSES = (("trialing", "Trialing"), ("active", "Active"), ("past_due", "Past due"), ("suspended", "Suspended"))


class AnalyticsRangeForm(forms.Form):
    months = forms.IntegerField(min_value=1, max_value=MAX_MONTHS)


def _range(request: HttpRequest) -> int:
    """The number of months asked for; bad input is reported as a message and the default is shown."""
    if "months" not in request.GET:
        return DEFAULT_MONTHS
    form = AnalyticsRangeForm(request.GET)
    if form.is_valid():
        return form.cleaned_data["months"]
    messages.warning(
        request,
        f"The range must be a whole number of months from 1 to {MAX_MONTHS}; showing the last {DEFAULT_MONTHS}.",
    )
    return DEFAULT_MONTHS


def _major_units(cents: int) -> float:
    # Charts only draw: the figures themselves (tables) stay integer cents formatted by the money filter.
    return cents / 100


def _short(name: str, length: int = 18) -> str:
    # Axis labels sit side by side; the table next to the chart has the full name.
    return name if len(name) <= length else f"{name[: length - 1]}…"


def _month_label(month: date) -> str:
    return f"{month:%b %Y}"


def _charts(dashboard: OperatorDashboard) -> dict[str, object]:
    """The SVG charts of the page; every number in them is also in a table next to it."""
    mrr = dashboard.mrr
    charts: dict[str, object] = {
        "subscribers": bar_chart_svg(
            labels=[row.name for row in mrr.tiers],
            series=[ChartSeries(label, [getattr(row, status) for row in mrr.tiers]) for status, label in _STATUSES],
            title="Current subscribers by tier and status",
            stacked=True,
        ),
        "mrr": {
            currency: bar_chart_svg(
                labels=[row.name for row in mrr.tiers if row.currency == currency],
                series=[ChartSeries("MRR", [_major_units(r.mrr_cents) for r in mrr.tiers if r.currency == currency])],
                title=f"MRR by tier ({currency.upper()})",
                unit=currency.upper(),
            )
            for currency in mrr.mrr_by_currency
        },
    }
    months = [_month_label(m) for m in dashboard.window.months]
    charts["revenue"] = {
        currency: bar_chart_svg(
            labels=months,
            series=[
                ChartSeries("Subscription fees", [_major_units(r.subscription_fees_cents) for r in rows]),
                ChartSeries("Overage", [_major_units(r.overage_cents) for r in rows]),
                # The chart draws from 0 up, so refunds are drawn by their size; the table shows the sign.
                ChartSeries("Refunds (subtracted)", [_major_units(-r.refunds_cents) for r in rows]),
            ],
            title=f"Revenue by month ({currency.upper()})",
            unit=currency.upper(),
        )
        for currency, rows in dashboard.revenue.items()
    }
    charts["channels"] = {
        currency: bar_chart_svg(
            labels=months,
            series=[ChartSeries(label, [_major_units(getattr(r, key)) for r in rows]) for key, label in CHANNELS],
            title=f"Revenue by channel ({currency.upper()})",
            unit=currency.upper(),
            stacked=True,
        )
        for currency, rows in dashboard.channels.items()
    }
    top = dashboard.top_customers
    charts["top_customers"] = bar_chart_svg(
        labels=[_short(c.team_name) for c in top],
        series=[ChartSeries("Tokens", [c.total_tokens for c in top])],
        title="Top customers by tokens",
        unit="tokens",
    )
    refusals = dashboard.refusals
    charts["refusals"] = bar_chart_svg(
        labels=[t.tier_slug for t in refusals.tiers],
        series=[ChartSeries(code, [t.by_code.get(code, 0) for t in refusals.tiers]) for code in refusals.codes],
        title="Quota refusals by tier",
        unit="requests",
        stacked=True,
    )
    charts["failed_payments"] = {
        currency: bar_chart_svg(
            labels=months,
            series=[ChartSeries("Failed payments", [r.count for r in rows])],
            title=f"Failed payments by month ({currency.upper()})",
        )
        for currency, rows in dashboard.failed_payments.by_month.items()
    }
    return charts


def analytics_page(request: HttpRequest) -> HttpResponse:
    dashboard = operator_dashboard(months=_range(request))
    context = {
        **admin.site.each_context(request),
        "title": "Operator analytics",
        "dashboard": dashboard,
        "charts": _charts(dashboard),
        "channels": CHANNELS,
        "statuses": _STATUSES,
        # The preset ranges, and the one asked for by URL if it is another.
        "month_choices": sorted({1, 3, 6, 12, 24, MAX_MONTHS, len(dashboard.window.months)}),
    }
    return TemplateResponse(request, "admin/analytics.html", context)


# config/urls.py includes this module at "admin/analytics/".
urlpatterns = [path("", admin.site.admin_view(analytics_page), name=URL_NAME)]
