"""A run's figures: read from the run's database with TierLab's own analytics, merged over shards, and
written as ``summary.json`` (DESIGN.md "The simulator") and ``monthly.csv``.

Per month (UTC calendar months of the run):
- ``revenue_cents``: ``subscriptions`` and ``overage`` as the operator analytics count them
  (``billing.analytics.revenue_by_month``: paid invoices' fee/proration and overage lines, in the month
  the invoice was paid), ``refunds`` (succeeded refunds, negative, in their month), ``partner_share``
  (``partners.analytics.partner_share_by_month``: the statements for the month) and ``licences``
  (``partners.analytics.license_fees_by_month``: each granted licence's monthly fee from the month it
  was granted); ``total_cents`` is their sum. US dollars: scenarios are priced in usd.
- ``mrr_cents``, ``subscribers_by_tier``, ``teams``: as the month ended (``billing.analytics.mrr_by_tier``;
  the engine takes the snapshot, since subscriptions keep no history). ``teams``: customer teams that
  had signed up and not left, licensees included.
- ``upgrades`` (trials started, subscriptions from free, upgrades, operator moves), ``downgrades``
  (scheduled downgrades applied) and ``churned`` (paying customers lost: cancels applied and teams
  moved to free after dunning, of teams that had paid an invoice before; a trial that ends unpaid is
  not churn): the billing audit log's entries in the month.
- ``refusals``: refused requests by error code (``usage.models.QuotaRefusalCount``).
- ``payments_failed``: failed charge attempts (``billing.analytics.failed_payments``); ``recovered``:
  renewal invoices paid in the month after at least one failed attempt (dunning that worked).

Every figure is a sum over teams, so shards merge by adding them up; partners and licensees live in
shard 0. The JSON is written with sorted keys and integer values only: the same run gives the same bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from django.db.models import Count, Exists, OuterRef, Sum
from django.db.models.functions import TruncMonth

from accounts.models import AuditEntry
from billing.analytics import failed_payments, month_window, revenue_by_month
from billing.models import Invoice, Payment
from core.periods import add_months
from partners.analytics import license_fees_by_month, partner_share_by_month
from simulation.population import REFUSAL_CODES
from usage.models import QuotaRefusalCount

if TYPE_CHECKING:
    from simulation.engine import ShardRun
    from simulation.scenario import Scenario

CHANNELS = ("subscriptions", "overage", "partner_share", "licences", "refunds")
CURRENCY = "usd"
UPGRADE_ACTIONS = (
    AuditEntry.Action.TRIAL_STARTED,
    AuditEntry.Action.SUBSCRIBED,
    AuditEntry.Action.UPGRADED,
    AuditEntry.Action.TIER_SET_BY_OPERATOR,
)
DOWNGRADE_ACTIONS = (AuditEntry.Action.DOWNGRADE_APPLIED,)
CHURN_ACTIONS = (
    AuditEntry.Action.CANCEL_APPLIED,
    AuditEntry.Action.CANCELED_NOW,
    AuditEntry.Action.DOWNGRADED_AFTER_DUNNING,
)


def _month_key(moment: dt.date | dt.datetime) -> str:
    return f"{moment:%Y-%m}"


def _by_month(rows: Iterable[Mapping[str, Any]], value: str = "n") -> dict[str, int]:
    return {_month_key(row["month"]): int(row[value] or 0) for row in rows}


def shard_figures(*, run: ShardRun) -> dict[str, Any]:
    """The shard's months (DESIGN's shape without ``total_cents``) and its diagnostics, from its database."""
    scenario = run.scenario
    last = add_months(scenario.start, scenario.months - 1)
    window = month_window(months=scenario.months, now=dt.datetime.combine(last, dt.time(12), tzinfo=dt.UTC))
    direct = {_month_key(row.month): row for row in revenue_by_month(window=window).get(CURRENCY, [])}
    partner = {
        _month_key(month): cents
        for (currency, month), cents in partner_share_by_month(window=window).items()
        if currency == CURRENCY
    }
    licences = {
        _month_key(month): cents
        for (currency, month), cents in license_fees_by_month(window=window).items()
        if currency == CURRENCY
    }
    failed = {_month_key(row.month): row.count for row in failed_payments(window=window).by_month.get(CURRENCY, [])}
    in_window = {"created_at__gte": window.start, "created_at__lt": window.end}
    audit = (
        AuditEntry.objects.filter(**in_window)
        .annotate(month=TruncMonth("created_at", tzinfo=dt.UTC))
        .values("month", "action")
        .annotate(n=Count("id"))
        .order_by()
    )
    actions: dict[str, Counter] = {}
    for row in audit:
        actions.setdefault(_month_key(row["month"]), Counter())[row["action"]] += row["n"]
    # Churn is a paying customer lost: a cancel or the end of dunning for a team that had paid an
    # invoice before. A trial that ends without a payment (cancelled, or its first charge failed
    # through dunning) is a conversion that did not happen, not churn.
    paid_before = Invoice.objects.filter(
        team_id=OuterRef("team_id"), status=Invoice.Status.PAID, paid_at__lt=OuterRef("created_at")
    )
    churned = _by_month(
        AuditEntry.objects.filter(**in_window, action__in=CHURN_ACTIONS)
        .filter(Exists(paid_before))
        .annotate(month=TruncMonth("created_at", tzinfo=dt.UTC))
        .values("month")
        .annotate(n=Count("id"))
        .order_by()
    )
    refused: dict[str, dict[str, int]] = {}
    rows = (
        QuotaRefusalCount.objects.filter(hour__gte=window.start, hour__lt=window.end)
        .annotate(month=TruncMonth("hour", tzinfo=dt.UTC))
        .values("month", "code")
        .annotate(n=Sum("count"))
        .order_by()
    )
    for row in rows:
        refused.setdefault(_month_key(row["month"]), {})[row["code"]] = int(row["n"] or 0)
    failed_attempt = Payment.objects.filter(invoice=OuterRef("pk"), status=Payment.Status.FAILED)
    recovered = _by_month(
        Invoice.objects.filter(
            kind=Invoice.Kind.RENEWAL, status=Invoice.Status.PAID, paid_at__gte=window.start, paid_at__lt=window.end
        )
        .filter(Exists(failed_attempt))
        .annotate(month=TruncMonth("paid_at", tzinfo=dt.UTC))
        .values("month")
        .annotate(n=Count("id"))
        .order_by()
    )
    snapshots = {snapshot.month: snapshot for snapshot in run.snapshots}
    months = []
    for name in scenario.month_names:
        row = direct.get(name)
        counted = actions.get(name, Counter())
        snapshot = snapshots[name]
        months.append(
            {
                "month": name,
                "revenue_cents": {
                    "subscriptions": row.subscription_fees_cents if row else 0,
                    "overage": row.overage_cents if row else 0,
                    "partner_share": partner.get(name, 0),
                    "licences": licences.get(name, 0),
                    "refunds": row.refunds_cents if row else 0,
                },
                "mrr_cents": snapshot.mrr_cents,
                "teams": snapshot.teams,
                "subscribers_by_tier": dict(snapshot.subscribers_by_tier),
                "upgrades": sum(counted[action] for action in UPGRADE_ACTIONS),
                "downgrades": sum(counted[action] for action in DOWNGRADE_ACTIONS),
                "churned": churned.get(name, 0),
                "refusals": {code: 0 for code in REFUSAL_CODES} | refused.get(name, {}),
                "payments_failed": failed.get(name, 0),
                "recovered": recovered.get(name, 0),
            }
        )
    return {"months": months, "diagnostics": dict(sorted(run.diagnostics.items()))}


def _add(total: Any, more: Any) -> Any:
    """Figures added up: integers, and dicts key by key (the union of their keys)."""
    if isinstance(total, dict):
        return {key: _add(total.get(key, 0), more.get(key, 0)) for key in sorted({*total, *more})}
    return total + more


def summary_build(*, scenario: Scenario, seed: int, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """DESIGN's summary.json from the shards' figures (one shard for a single-process run)."""
    months = []
    for index, name in enumerate(scenario.month_names):
        month: dict[str, Any] = {"month": name}
        for figures in shards:
            row = {k: v for k, v in figures["months"][index].items() if k != "month"}
            month = {"month": name, **{k: _add(month[k], v) if k in month else v for k, v in row.items()}}
        month["total_cents"] = sum(month["revenue_cents"].values())
        months.append(month)
    revenue = {channel: sum(month["revenue_cents"][channel] for month in months) for channel in CHANNELS}
    return {
        "scenario": scenario.name,
        "seed": seed,
        "months": months,
        "totals": {"revenue_cents": revenue, "total_cents": sum(revenue.values())},
    }


def diagnostics_merge(shards: list[dict[str, Any]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for figures in shards:
        merged = _add(merged, figures.get("diagnostics", {}))
    return merged


def summary_json(summary: Mapping[str, Any]) -> str:
    """The bytes of summary.json: sorted keys, two-space indent, a final newline."""
    return json.dumps(summary, indent=2, sort_keys=True) + "\n"


def monthly_csv(summary: Mapping[str, Any]) -> str:
    """One row per month: the channels, the total, then every other figure (a column per tier and per
    refusal code)."""
    months = summary["months"]
    tiers = sorted({slug for month in months for slug in month["subscribers_by_tier"]})
    codes = sorted({code for month in months for code in month["refusals"]})
    header = [
        "month",
        *(f"{channel}_cents" for channel in CHANNELS),
        "total_cents",
        "mrr_cents",
        "teams",
        *(f"subscribers_{slug}" for slug in tiers),
        "upgrades",
        "downgrades",
        "churned",
        *(f"refusals_{code}" for code in codes),
        "payments_failed",
        "recovered",
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for month in months:
        writer.writerow(
            [
                month["month"],
                *(month["revenue_cents"][channel] for channel in CHANNELS),
                month["total_cents"],
                month["mrr_cents"],
                month["teams"],
                *(month["subscribers_by_tier"].get(slug, 0) for slug in tiers),
                month["upgrades"],
                month["downgrades"],
                month["churned"],
                *(month["refusals"].get(code, 0) for code in codes),
                month["payments_failed"],
                month["recovered"],
            ]
        )
    return out.getvalue()
