"""The billing engine's local part, without Stripe: period close (renewal invoices, overage, scheduled
changes, trial ends, free tiers), its exactly-once guarantees (twice in a row, twice at once), its
set-based shape (queries per batch do not grow with the batch), scheduling and undoing changes,
operator actions that need no charge, the overview and the run_billing command's parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import AuditEntry
from billing import checkout, refunds, run, selectors, services
from billing.management.commands.run_billing import parse_now
from billing.models import Invoice, InvoiceLine
from core.periods import period_bounds
from tests.billing.billing_engine_helpers import run_in_threads, subscription_of, team_on, usage
from tests.factories import UserFactory
from tiers.models import Subscription
from tiers.services import InvalidTierChange, ReasonRequired, TierUnavailable


def dt(y, m, d, h=10, minute=0):
    return datetime(y, m, d, h, minute, tzinfo=UTC)


JAN_31 = dt(2026, 1, 31)
FEB_28 = dt(2026, 2, 28)
MAR_31 = dt(2026, 3, 31)


def close(now):
    return run.billing_periods_close(now=now)


def renewal_of(team) -> Invoice:
    return Invoice.objects.get(team=team, kind=Invoice.Kind.RENEWAL)


def lines_of(invoice) -> list[tuple[str, int, int]]:
    return [(line.kind, line.quantity, line.amount_cents) for line in invoice.lines.order_by("id")]


# --- Period close -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_period_close_issues_one_renewal_with_the_next_periods_fee_and_advances(catalog):
    pro = catalog["pro"]
    team = team_on(pro, anchor=JAN_31)

    assert close(FEB_28 - timedelta(seconds=1)).periods_closed == 0  # not over yet
    result = close(FEB_28)

    assert (result.periods_closed, result.invoices_created) == (1, 1)
    sub = subscription_of(team)
    # Jan 31 -> Feb 28 (clamped), then Feb 28 -> Mar 31: computed from the anchor, no drift.
    assert (sub.current_period_start, sub.current_period_end, sub.billing_anchor) == (FEB_28, MAR_31, JAN_31)
    invoice = renewal_of(team)
    assert invoice.billing_key == f"renewal:{sub.pk}:{FEB_28.isoformat()}"
    assert invoice.number == f"TL-{invoice.pk:08d}"
    assert (invoice.status, invoice.total_cents, invoice.currency) == ("open", 20_000, "usd")
    assert (invoice.period_start, invoice.period_end) == (FEB_28, MAR_31)
    assert (invoice.issued_at, invoice.next_attempt_at, invoice.attempt_count) == (FEB_28, FEB_28, 0)
    # Stored as the ORM stores datetimes (on SQLite they compare as text): found by the charge phase.
    assert Invoice.objects.filter(next_attempt_at__lte=FEB_28, issued_at=FEB_28).get() == invoice
    assert Subscription.objects.filter(updated_at__lte=timezone.now(), current_period_end=MAR_31).exists()
    [fee] = invoice.lines.all()
    assert (fee.kind, fee.tier, fee.amount_cents, fee.period_start, fee.period_end) == (
        "fee",
        pro,
        20_000,
        FEB_28,
        MAR_31,
    )


@pytest.mark.django_db
def test_period_close_twice_issues_one_invoice(catalog):
    team = team_on(catalog["pro"], anchor=JAN_31)
    assert close(FEB_28 + timedelta(hours=1)).invoices_created == 1
    again = close(FEB_28 + timedelta(hours=1))
    assert (again.periods_closed, again.invoices_created) == (0, 0)
    assert Invoice.objects.filter(team=team).count() == 1
    assert InvoiceLine.objects.filter(invoice__team=team).count() == 1


@pytest.mark.django_db
def test_overage_of_the_ended_period_is_billed_rounded_up_to_the_cent(catalog):
    pro = catalog["pro"]  # 200M tokens included, 60 cents per million beyond
    team = team_on(pro, anchor=JAN_31)
    usage(team, 150_000_000, JAN_31)  # the period's first instant counts
    usage(team, 50_000_001, FEB_28 - timedelta(microseconds=1))  # ... and its last
    usage(team, 999_000_000, FEB_28)  # the next period's first instant does not
    usage(team, 999_000_000, JAN_31 - timedelta(seconds=1))  # nor the previous period's last

    close(FEB_28)

    invoice = renewal_of(team)
    # 200,000,001 used: 1 token over -> 60/1,000,000 of a cent, rounded up to 1 cent.
    assert lines_of(invoice) == [("fee", 1, 20_000), ("overage", 1, 1)]
    overage = invoice.lines.get(kind="overage")
    assert (overage.tier, overage.unit_amount_cents) == (pro, 60)
    assert (overage.period_start, overage.period_end) == (JAN_31, FEB_28)  # the ENDED period
    assert invoice.total_cents == 20_001


@pytest.mark.django_db
def test_overage_is_exact_for_many_teams_in_one_batch(catalog):
    pro = catalog["pro"]
    teams = [team_on(pro, anchor=dt(2026, 3, day)) for day in range(1, 6)]
    for n, team in enumerate(teams):
        usage(team, 200_000_000 + n * 1_500_000, dt(2026, 3, 20))
    close(dt(2026, 4, 6))
    assert [renewal_of(team).total_cents for team in teams] == [20_000, 20_090, 20_180, 20_270, 20_360]


@pytest.mark.django_db
def test_a_hard_capped_tier_bills_no_overage(catalog):
    team = team_on(catalog["plus"], anchor=JAN_31)  # overage policy "block"
    usage(team, 500_000_000, dt(2026, 2, 10))
    close(FEB_28)
    assert lines_of(renewal_of(team)) == [("fee", 1, 2_000)]


@pytest.mark.django_db
def test_scheduled_downgrade_applies_at_the_boundary_fee_at_new_tier_overage_at_old(catalog):
    pro, plus = catalog["pro"], catalog["plus"]
    team = team_on(pro, anchor=JAN_31)
    usage(team, 201_000_000, dt(2026, 2, 1))
    result = checkout.subscription_change(team=team, tier=plus, now=dt(2026, 2, 10))
    assert result.change == "downgrade_scheduled" and result.invoice is None
    assert subscription_of(team).tier == pro  # nothing changes before the period end

    assert close(FEB_28).changes_applied == 1

    sub = subscription_of(team)
    assert (sub.tier, sub.pending_tier, sub.current_period_end) == (plus, None, MAR_31)
    invoice = renewal_of(team)
    assert lines_of(invoice) == [("fee", 1, 2_000), ("overage", 1_000_000, 60)]
    assert invoice.lines.get(kind="fee").tier == plus and invoice.lines.get(kind="overage").tier == pro
    assert AuditEntry.objects.filter(team=team, action="downgrade_applied").count() == 1


@pytest.mark.django_db
def test_cancel_at_period_end_moves_to_free_with_no_invoice(catalog):
    team = team_on(catalog["plus"], anchor=JAN_31)
    assert checkout.subscription_cancel(team=team, now=dt(2026, 2, 3)).change == "cancel_scheduled"
    close(FEB_28)
    sub = subscription_of(team)
    assert (sub.tier.slug, sub.cancel_at_period_end, sub.status) == ("free", False, "active")
    assert not Invoice.objects.filter(team=team).exists()


@pytest.mark.django_db
def test_cancel_after_overage_bills_the_overage_alone(catalog):
    team = team_on(catalog["pro"], anchor=JAN_31)
    usage(team, 210_000_000, dt(2026, 2, 1))
    checkout.subscription_cancel(team=team, now=dt(2026, 2, 3))
    close(FEB_28)
    invoice = renewal_of(team)
    assert subscription_of(team).tier.slug == "free"
    assert lines_of(invoice) == [("overage", 10_000_000, 600)]
    assert (invoice.period_start, invoice.period_end) == (JAN_31, FEB_28)  # the period it bills


@pytest.mark.django_db
def test_resume_undoes_a_scheduled_downgrade_or_cancel(catalog):
    pro = catalog["pro"]
    team = team_on(pro, anchor=JAN_31)
    checkout.subscription_change(team=team, tier=catalog["free"], now=dt(2026, 2, 3))
    assert subscription_of(team).pending_tier.slug == "free"
    assert checkout.subscription_resume(team=team).change == "resumed"
    checkout.subscription_cancel(team=team, now=dt(2026, 2, 3))
    # Choosing the current tier again also undoes it.
    assert checkout.subscription_change(team=team, tier=pro, now=dt(2026, 2, 4)).change == "resumed"
    with pytest.raises(InvalidTierChange):
        checkout.subscription_resume(team=team)
    close(FEB_28)
    assert subscription_of(team).tier == pro
    assert renewal_of(team).total_cents == 20_000


@pytest.mark.django_db
def test_trial_end_starts_the_first_paid_period_with_no_overage(catalog):
    pro = catalog["pro"]
    team = team_on(pro, anchor=JAN_31)
    trial_end = JAN_31 + timedelta(days=14)
    Subscription.objects.filter(team=team).update(
        status="trialing", trial_end=trial_end, billing_anchor=trial_end, current_period_end=trial_end
    )
    usage(team, 900_000_000, dt(2026, 2, 5))  # a trial is free, its usage too

    close(trial_end)

    sub = subscription_of(team)
    assert sub.status == "active"
    assert (sub.current_period_start, sub.current_period_end) == (trial_end, dt(2026, 3, 14))
    invoice = renewal_of(team)
    assert lines_of(invoice) == [("fee", 1, 20_000)]
    assert AuditEntry.objects.filter(team=team, action="trial_ended").exists()


@pytest.mark.django_db
def test_free_tiers_only_advance_and_catch_up_to_the_current_period(catalog):
    team = team_on(catalog["free"], anchor=JAN_31)
    result = close(dt(2026, 5, 3))
    sub = subscription_of(team)
    assert result.periods_closed == 1 and result.invoices_created == 0
    assert (sub.current_period_start, sub.current_period_end) == (dt(2026, 4, 30), dt(2026, 5, 31))


@pytest.mark.django_db
def test_a_paid_subscription_behind_by_periods_catches_up_one_period_per_pass(catalog):
    team = team_on(catalog["plus"], anchor=JAN_31)
    close(dt(2026, 4, 5))
    close(dt(2026, 4, 5))
    assert list(Invoice.objects.filter(team=team).order_by("period_start").values_list("period_start", flat=True)) == [
        FEB_28,
        MAR_31,
    ]


@pytest.mark.django_db
def test_past_due_and_suspended_subscriptions_do_not_renew(catalog):
    past_due = team_on(catalog["pro"], anchor=JAN_31, status="past_due")
    suspended = team_on(catalog["pro"], anchor=JAN_31, status="suspended")
    close(dt(2026, 3, 5))
    assert not Invoice.objects.filter(team__in=[past_due, suspended]).exists()
    assert subscription_of(past_due).current_period_end == FEB_28


@pytest.mark.django_db
def test_a_price_change_applies_to_the_next_period_and_never_rewrites_an_invoice(catalog):
    pro = catalog["pro"]
    team = team_on(pro, anchor=JAN_31)
    close(FEB_28)
    pro.price_cents = 25_000
    pro.save()
    close(MAR_31)
    totals = list(Invoice.objects.filter(team=team).order_by("period_start").values_list("total_cents", flat=True))
    assert totals == [20_000, 25_000]


@pytest.mark.django_db
def test_a_monthly_to_yearly_change_re_anchors_at_the_boundary(catalog):
    pro = catalog["pro"]
    yearly = pro.__class__.objects.create(
        slug="pro-yearly", name="Pro yearly", price_cents=15_000, billing_interval="year", monthly_tokens=1
    )
    team = team_on(pro, anchor=dt(2026, 1, 15))
    checkout.subscription_change(team=team, tier=yearly, now=dt(2026, 1, 20))  # cheaper: at period end
    close(dt(2026, 2, 15))
    sub = subscription_of(team)
    assert (sub.billing_anchor, sub.current_period_start, sub.current_period_end) == (
        dt(2026, 2, 15),
        dt(2026, 2, 15),
        dt(2027, 2, 15),
    )


@pytest.mark.django_db
def test_period_close_takes_a_fixed_number_of_queries_per_batch_whatever_its_size(catalog):
    pro = catalog["pro"]
    small = [team_on(pro, anchor=dt(2026, 1, 5)) for _ in range(3)]
    for team in small:
        usage(team, 1, dt(2026, 1, 6))
    with CaptureQueriesContext(connection) as three:
        assert close(dt(2026, 2, 5)).invoices_created == 3

    big = [team_on(pro, anchor=dt(2026, 3, 5)) for _ in range(40)]
    for team in big:
        usage(team, 1, dt(2026, 3, 6))
    Subscription.objects.filter(team__in=small).update(current_period_end=dt(2027, 1, 1))
    with CaptureQueriesContext(connection) as forty:
        assert close(dt(2026, 4, 5)).invoices_created == 40

    assert len(forty) == len(three) <= 14, [q["sql"][:80] for q in forty.captured_queries]


@pytest.mark.django_db
def test_period_close_works_in_batches(catalog):
    teams = [team_on(catalog["plus"], anchor=dt(2026, 1, 5)) for _ in range(7)]
    result = run.billing_periods_close(now=dt(2026, 2, 5), batch_size=3)
    assert (result.batches, result.periods_closed, result.invoices_created) == (3, 7, 7)
    numbers = list(Invoice.objects.filter(team__in=teams).values_list("number", flat=True))
    assert len(set(numbers)) == 7 and all(n.startswith("TL-") for n in numbers)


@pytest.mark.django_db(transaction=True)
def test_two_period_closes_at_once_issue_one_invoice_per_subscription(catalog):
    teams = [team_on(catalog["pro"], anchor=dt(2026, 1, 5)) for _ in range(30)]
    for team in teams:
        usage(team, 250_000_000, dt(2026, 1, 20))
    now = dt(2026, 2, 5)
    outcomes = run_in_threads([lambda: close(now), lambda: close(now)])
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert sum(o.invoices_created for o in outcomes) == 30
    assert sum(o.periods_closed for o in outcomes) == 30
    assert Invoice.objects.filter(team__in=teams).count() == 30
    assert InvoiceLine.objects.filter(invoice__team__in=teams).count() == 60  # fee + overage, once each
    assert set(Subscription.objects.filter(team__in=teams).values_list("current_period_end", flat=True)) == {
        dt(2026, 3, 5)
    }


# --- Dunning without a card (no Stripe call is made) ---------------------------------------------------


@pytest.mark.django_db
def test_a_renewal_without_a_card_on_file_goes_into_dunning_without_calling_stripe(catalog, settings):
    settings.TIERLAB_DUNNING_RETRY_DAYS = [1, 3, 5]
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # anything reaching Stripe would fail the pass
    team = team_on(catalog["plus"], anchor=JAN_31)

    result = run.billing_run(now=FEB_28)

    assert (result.payments_failed, result.errors) == (1, [])
    invoice = renewal_of(team)
    payment = invoice.payments.get()
    assert (payment.status, payment.failure_code, payment.stripe_payment_intent_id) == (
        "failed",
        "no_payment_method",
        None,
    )
    invoice.refresh_from_db()
    sub = subscription_of(team)
    assert (sub.status, sub.past_due_since, invoice.next_attempt_at) == ("past_due", FEB_28, dt(2026, 3, 1))


@pytest.mark.django_db
def test_dunning_ends_when_the_retry_schedule_was_shortened(catalog, settings):
    settings.TIERLAB_DUNNING_RETRY_DAYS = [1, 3, 5]
    team = team_on(catalog["plus"], anchor=JAN_31)
    run.billing_run(now=FEB_28)
    run.billing_run(now=dt(2026, 3, 1))
    invoice = renewal_of(team)
    assert (invoice.attempt_count, invoice.next_attempt_at) == (2, dt(2026, 3, 3))

    settings.TIERLAB_DUNNING_RETRY_DAYS = [1]  # two attempts in all: this invoice has had them
    result = run.billing_run(now=dt(2026, 3, 3))

    assert (result.payments_attempted, result.downgraded) == (0, 1)
    invoice.refresh_from_db()
    assert invoice.status == "uncollectible" and subscription_of(team).tier.slug == "free"


# --- Scheduling and operator actions (no charge involved) ----------------------------------------------


@pytest.mark.django_db
def test_changes_to_unavailable_tiers_or_the_same_tier_are_refused(catalog):
    team = team_on(catalog["pro"], anchor=JAN_31)
    with pytest.raises(InvalidTierChange):
        checkout.subscription_change(team=team, tier=catalog["pro"], now=dt(2026, 2, 3))
    with pytest.raises(TierUnavailable):
        checkout.subscription_change(team=team, tier=catalog["enterprise"], now=dt(2026, 2, 3))  # not public
    catalog["plus"].is_archived = True
    catalog["plus"].save()
    with pytest.raises(TierUnavailable):
        checkout.subscription_change(team=team, tier=catalog["plus"], now=dt(2026, 2, 3))
    with pytest.raises(InvalidTierChange):
        checkout.subscription_cancel(team=team_on(catalog["free"], anchor=JAN_31))


@pytest.mark.django_db
def test_free_to_paid_needs_a_card(catalog):
    team = team_on(catalog["free"], anchor=JAN_31)
    with pytest.raises(services.PaymentMethodRequired):
        checkout.subscription_change(team=team, tier=catalog["plus"], now=dt(2026, 2, 3))
    assert subscription_of(team).tier.slug == "free"


@pytest.mark.django_db
def test_operator_tier_change_and_immediate_cancel_are_audited(catalog):
    operator = UserFactory(is_staff=True)
    team = team_on(catalog["plus"], anchor=JAN_31)
    sub = subscription_of(team)
    with pytest.raises(ReasonRequired):
        checkout.subscription_tier_set_by_operator(
            subscription=sub, tier=catalog["enterprise"], actor=operator, reason=""
        )
    checkout.subscription_tier_set_by_operator(
        subscription=sub, tier=catalog["enterprise"], actor=operator, reason="signed contract", now=dt(2026, 2, 3)
    )
    sub = subscription_of(team)
    assert sub.tier.slug == "enterprise" and sub.current_period_end == FEB_28  # period kept, no proration
    entry = AuditEntry.objects.get(team=team, action="tier_set_by_operator")
    assert (entry.actor, entry.data["reason"], entry.data["to_tier"]) == (operator, "signed contract", "enterprise")

    result = checkout.subscription_cancel(team=team, immediately=True, actor=operator, now=dt(2026, 2, 4))
    sub = subscription_of(team)
    assert result.change == "canceled" and sub.tier.slug == "free"
    assert (sub.current_period_start, sub.current_period_end) == period_bounds(dt(2026, 2, 4), "month", 0)
    assert AuditEntry.objects.get(team=team, action="canceled_now").actor == operator


@pytest.mark.django_db
def test_comp_of_an_open_renewal_voids_it_and_ends_past_due(catalog):
    operator = UserFactory(is_staff=True)
    team = team_on(catalog["pro"], anchor=JAN_31)
    close(FEB_28)
    invoice = renewal_of(team)
    Subscription.objects.filter(team=team).update(status="past_due", past_due_since=FEB_28)
    with pytest.raises(ReasonRequired):
        refunds.invoice_comp(invoice=invoice, actor=operator, reason=" ", now=dt(2026, 3, 1))
    refunds.invoice_comp(invoice=invoice, actor=operator, reason="outage credit", now=dt(2026, 3, 1))
    assert (invoice.status, invoice.voided_at, invoice.next_attempt_at) == ("void", dt(2026, 3, 1), None)
    sub = subscription_of(team)
    assert (sub.status, sub.past_due_since) == ("active", None)
    assert AuditEntry.objects.get(team=team, action="invoice_comped").data["reason"] == "outage credit"
    with pytest.raises(services.BillingError):
        refunds.invoice_comp(invoice=invoice, actor=operator, reason="again")


@pytest.mark.django_db
def test_comp_of_a_suspended_teams_renewal_clears_its_debt_but_not_the_suspension(catalog):
    operator = UserFactory(is_staff=True)
    team = team_on(catalog["pro"], anchor=JAN_31)
    close(FEB_28)
    Subscription.objects.filter(team=team).update(status="suspended", past_due_since=FEB_28)
    refunds.invoice_comp(invoice=renewal_of(team), actor=operator, reason="goodwill", now=dt(2026, 3, 1))
    sub = subscription_of(team)
    # Lifting the suspension later must not bring back a debt that is settled (tiers.services.subscription_unsuspend).
    assert (sub.status, sub.past_due_since) == ("suspended", None)


# --- The billing page's overview -------------------------------------------------------------------------


@pytest.mark.django_db
def test_overview_next_charge_is_the_next_fee_plus_overage_so_far(catalog):
    team = team_on(catalog["pro"], anchor=JAN_31)
    usage(team, 203_000_000, dt(2026, 2, 10))
    overview = selectors.billing_overview(team=team, now=dt(2026, 2, 11))
    assert (overview.next_charge_at, overview.next_charge_cents, overview.currency) == (FEB_28, 20_180, "usd")
    assert overview.pending_change == ""

    checkout.subscription_change(team=team, tier=catalog["plus"], now=dt(2026, 2, 11))
    overview = selectors.billing_overview(team=team, now=dt(2026, 2, 11))
    assert overview.pending_change == "Moves to Plus on Feb 28"
    assert overview.next_charge_cents == 2_000 + 180

    checkout.subscription_cancel(team=team, now=dt(2026, 2, 11))
    overview = selectors.billing_overview(team=team, now=dt(2026, 2, 11))
    assert overview.pending_change == "Cancels on Feb 28"
    assert overview.next_charge_cents == 180  # only the overage is left to charge


@pytest.mark.django_db
def test_overview_of_a_free_team_has_no_next_charge(catalog):
    team = team_on(catalog["free"], anchor=JAN_31)
    overview = selectors.billing_overview(team=team, now=dt(2026, 2, 11))
    assert (overview.next_charge_at, overview.next_charge_cents, overview.card_last4) == (None, None, "")


# --- run_billing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T00:00:00Z", datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-03-01T12:30:00+02:00", datetime(2026, 3, 1, 10, 30, tzinfo=UTC)),
        ("2026-03-01 12:30", datetime(2026, 3, 1, 12, 30, tzinfo=UTC)),  # naive: UTC
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
    ],
)
def test_run_billing_parses_now(text, expected):
    assert parse_now(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-02-30", "2026-13-01T00:00:00Z", "1700000000"])
def test_run_billing_refuses_a_bad_now(text):
    with pytest.raises(CommandError, match="--now"):
        call_command("run_billing", "--now", text)


@pytest.mark.django_db
def test_run_billing_refuses_a_payment_concurrency_below_one(catalog):
    team_on(catalog["free"], anchor=JAN_31)
    before = list(Subscription.objects.values_list("current_period_end", flat=True))
    with pytest.raises(CommandError, match="--payment-concurrency must be 1 or more"):
        call_command("run_billing", "--now", "2026-02-28T10:00:00Z", "--payment-concurrency", "0")
    assert list(Subscription.objects.values_list("current_period_end", flat=True)) == before  # nothing ran


@pytest.mark.django_db
def test_run_billing_refuses_a_close_concurrency_below_one(catalog):
    team_on(catalog["free"], anchor=JAN_31)
    before = list(Subscription.objects.values_list("current_period_end", flat=True))
    with pytest.raises(CommandError, match="--close-concurrency must be 1 or more"):
        call_command("run_billing", "--now", "2026-02-28T10:00:00Z", "--close-concurrency", "0")
    assert list(Subscription.objects.values_list("current_period_end", flat=True)) == before  # nothing ran


@pytest.mark.django_db
def test_run_billing_runs_a_local_pass_and_prints_a_summary(catalog, capsys):
    team_on(catalog["free"], anchor=JAN_31)
    call_command("run_billing", "--now", "2026-02-28T10:00:00Z")
    out = capsys.readouterr().out
    assert "Billing pass at 2026-02-28T10:00:00+00:00: 1 period(s) closed, 0 invoice(s) issued" in out


def test_the_celery_task_is_registered_under_its_beat_name():
    from django.conf import settings

    from billing import tasks
    from config.celery import app

    assert tasks.billing_run.name == settings.CELERY_BEAT_SCHEDULE["billing-run"]["task"] == "billing.tasks.billing_run"
    assert tasks.billing_run.acks_late and tasks.billing_run.time_limit and tasks.billing_run.soft_time_limit
    assert "billing.tasks.billing_run" in app.tasks


@pytest.mark.django_db
def test_the_celery_task_runs_one_pass_and_reports_it(catalog):
    from billing import tasks

    team_on(catalog["free"], anchor=timezone.now() - timedelta(days=40))
    summary = tasks.billing_run.apply().get()
    assert summary["periods_closed"] == 1 and summary["errors"] == []
