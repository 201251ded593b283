"""The simulated clock: one run (or one shard of a run) of a scenario through TierLab's own services.

Runs against the database the process is configured with, which must be the run's own, fresh one:
simulation/runner.py starts this in a process of its own on a new SQLite file (or a PostgreSQL database
named for the run), never on the platform's.

The clock moves one day at a time, at midnight UTC, and the process's clock is moved with it
(time-machine, without ticking), so the services' ``now`` and every ``timezone.now()`` and ``auto_now``
inside them agree on the simulated time. Each day, in this order (each day one transaction):
1. at a month's start, the month before is closed: MRR and subscribers by tier read from billing's
   analytics (``mrr_by_tier``), the month's refusal counts written (``usage.refusals``), usage folded
   into the rollups (``usage.rollups.usage_rollup_fold``), partner statements issued
   (``partners.statements.partner_statements_issue``). Usage alerts are not evaluated: a few queries
   per team and day; the teams' "near the limit" is read from the same counters the quota uses;
2. the scenario's tier changes dated today (the admin's edit);
3. arrivals: a user and personal team each (``tiers.services.users_create``, the day's sign-ups in
   batches), then the segment's start tier
   through checkout (``billing.checkout.subscription_change``: a trial, or the first period charged)
   or, for tiers not open to sign-up, an operator's move;
4. each team decides (its own random stream): upgrade after refusals or near its quota, downgrade,
   cancel and leave, a card that starts failing, a card fixed while past due, a spend cap, a trial
   not converted; each decision is the service a customer's click would call;
5. the billing pass: periods closed with overage from the usage records (``billing.run.billing_periods_close``),
   the due renewals charged in batches (``billing.charges_batch.renewals_charge``: the same rows, dunning
   and emails as charging them one by one, with a few statements per 500), then ``billing.run.billing_run``
   for the rest (attempts pending, no card on file, dunning's end); the day's receipts (of the
   checkouts, renewals and retries that were paid) are sent together once the day has committed
   (``billing.emails.receipts_batched``), counted in the diagnostics as "receipts sent";
6. licensees report last month's MAU on the 1st, the licence checks run, and flagged licensees ask
   for and get their licence after the scenario's delays; hosting partners report the day's usage;
7. every team whose subscription changed today gets its entitlements again
   (``tiers.selectors.entitlements_for_teams``), then the day's traffic is admitted against them in
   aggregate and recorded (simulation/population.py states the aggregation).
"""

from __future__ import annotations

import calendar
import datetime as dt
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import time_machine
from django.db import transaction

from billing.analytics import mrr_by_tier
from billing.charges_batch import renewals_charge
from billing.checkout import subscription_cancel, subscription_change, subscription_tier_set_by_operator
from billing.customers import payment_method_update
from billing.emails import receipts_batched
from billing.models import BillingCustomer, Payment
from billing.refunds import payment_refund
from billing.run import billing_periods_close, billing_run
from core.errors import ApplicationError
from core.periods import add_months
from partners.statements import partner_statements_issue
from simulation.catalog import catalog_build, catalog_changes_apply
from simulation.channels import Licensee, PartnerChannel, licensees_day
from simulation.population import (
    CARD_FAILS,
    CARD_FIX,
    CHURN,
    DOWNGRADE,
    UPGRADE,
    Caps,
    SimTeam,
    admit_day,
    arrivals_schedule,
    daily_probability,
    shard_of,
    team_new,
)
from tiers import catalog as seed_catalog
from tiers.models import Subscription
from tiers.selectors import entitlements_for_teams, subscription_current
from tiers.services import subscription_spend_cap_set, user_create, users_create
from usage import refusals
from usage.metering import limits_for
from usage.quotas.base import UsageEvent
from usage.rollups import usage_rollup_fold
from usage.services import usage_records_create_new

if TYPE_CHECKING:
    from accounts.models import User
    from simulation.scenario import Scenario
    from tiers.models import Tier
    from tiers.selectors import Entitlements

EMAIL_DOMAIN = "sim.tierlab.localhost"
FAILING_CARD = "pm_card_chargeCustomerFail"
WORKING_CARD = "pm_card_visa"
RECORD_BATCH = 5_000  # usage records per INSERT (one JSON parameter each: usage_records_create_new)
SIGNUP_BATCH = 500  # sign-ups per users_create (its INSERTs stay well under SQLite's parameter limit)
ENTITLEMENTS_BATCH = 2_000  # teams per query (well under SQLite's 32,766 parameters)
# A usage record's token columns are 32-bit on PostgreSQL: a team-day above this is stored in parts.
RECORD_MAX_TOKENS = 2_000_000_000


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


@dataclass
class MonthSnapshot:
    """What can only be read while the month ends (billing keeps no history of subscriptions)."""

    month: str
    mrr_cents: int
    teams: int
    subscribers_by_tier: dict[str, int]


@dataclass
class ShardRun:
    """One shard's run: its teams (``shard`` of ``shards``; partners and licensees in shard 0)."""

    scenario: Scenario
    seed: int
    shard: int = 0
    shards: int = 1
    progress: Callable[[int, int], None] | None = None
    snapshots: list[MonthSnapshot] = field(default_factory=list)
    diagnostics: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.teams: list[SimTeam] = []
        self.pending: dict[dt.date, list[SimTeam]] = {}
        self.tiers: dict[str, Tier] = {}
        self.operator: User | None = None
        self.partners: list[PartnerChannel] = []
        self.licensees: list[Licensee] = []
        self.today = self.scenario.start
        self.now = midnight(self.today)
        self.changed_tiers: set[str] = set()
        self.days_in_month = 31
        self.team_days = 0  # teams simulated x days, for the speed figure
        self.seconds_by_phase: dict[str, float] = {}
        self.records: list[UsageEvent] = []  # usage records to write at the end of the day

    # --- The run -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Set up, then every day from the scenario's start to its end, then close the last month."""
        start, end = self.scenario.start, self.scenario.end
        days = (end - start).days
        traveller = time_machine.travel(self.now, tick=False)
        clock = traveller.start()
        try:
            started = time.perf_counter()
            with transaction.atomic():
                self._setup()
            self.seconds_by_phase["setup"] = time.perf_counter() - started
            for index in range(days):
                self.today = start + dt.timedelta(days=index)
                self.now = midnight(self.today)
                clock.move_to(self.now)
                with receipts_batched() as receipts, transaction.atomic():
                    self._day()
                self.diagnostics["receipts sent"] += receipts.sent
                if self.progress is not None:
                    self.progress(index + 1, days)
            self.today, self.now = end, midnight(end)
            clock.move_to(self.now)
            with transaction.atomic():
                self._month_close()
        finally:
            traveller.stop()

    def _setup(self) -> None:
        self.tiers = catalog_build(scenario=self.scenario)
        # Refunds and licence grants are operators' actions: they need an operator to record who acted.
        # Its personal team is not a customer: the snapshots leave it out (see _month_close).
        self.operator = user_create(email=f"operator@{EMAIL_DOMAIN}")
        for segment in self.scenario.segments:
            ordinal = 0
            for day, count in arrivals_schedule(
                seed=self.seed, segment=segment, start=self.scenario.start, end=self.scenario.end
            ):
                for _ in range(count):
                    team = team_new(seed=self.seed, segment=segment, ordinal=ordinal, arrival=day)
                    ordinal += 1
                    if shard_of(team.key, self.shards) == self.shard:
                        self.pending.setdefault(day, []).append(team)
        if self.shard == 0:
            self.partners = [
                PartnerChannel.create(spec=spec, seed=self.seed, email_domain=EMAIL_DOMAIN)
                for spec in self.scenario.partners
            ]
            self.licensees = [Licensee.create(spec=spec, email_domain=EMAIL_DOMAIN) for spec in self.scenario.licensees]

    def _day(self) -> None:
        self.days_in_month = calendar.monthrange(self.today.year, self.today.month)[1]
        clock = self._phase_clock()
        if self.today.day == 1 and self.today != self.scenario.start:
            self._month_close()
            clock("month close")
        self.changed_tiers = catalog_changes_apply(changes=self.scenario.tier_changes, day=self.today, tiers=self.tiers)
        arrived = self.pending.pop(self.today, [])
        self._arrive(arrived)
        clock("arrivals")
        for team in (*self.teams, *arrived):
            if not team.left:
                team.draw_day()
        for team in self.teams:
            if not team.left and team.entitlements is not None:
                self._decide(team)
        self.teams.extend(arrived)
        clock("decisions")
        # The period close, then the due renewals charged in batches (billing.charges_batch), then
        # the pass itself for everything else (checkouts left open, attempts pending, dunning's end).
        billing_periods_close(now=self.now)
        batch = renewals_charge(now=self.now)
        result = billing_run(now=self.now)
        result.errors[:0] = batch.errors or []
        if result.errors:
            self.diagnostics.update(f"refused: billing: {error.split(': ', 1)[-1]}" for error in result.errors)
        clock("billing pass")
        licensees_day(
            licensees=self.licensees, today=self.today, now=self.now, start=self.scenario.start, operator=self.operator
        )
        for partner in self.partners:
            partner.report_day(today=self.today, now=self.now, start=self.scenario.start)
        clock("partners and licensees")
        self._entitlements_refresh()
        clock("entitlements")
        self._traffic()
        clock("traffic")

    def _phase_clock(self) -> Callable[[str], None]:
        """Where the run's time goes (run.json's ``seconds_by_phase``): wall-clock time, never the
        simulated clock (time-machine leaves time.perf_counter alone)."""
        last = [time.perf_counter()]

        def lap(phase: str) -> None:
            now = time.perf_counter()
            self.seconds_by_phase[phase] = self.seconds_by_phase.get(phase, 0.0) + now - last[0]
            last[0] = now

        return lap

    # --- Month end ---------------------------------------------------------------------------------

    def _month_close(self) -> None:
        """Close the month before ``today`` (the 1st, or the run's end): see the module docstring."""
        month_start = midnight(add_months(self.today, -1))
        report = mrr_by_tier()
        subscribers = {row.slug: row.subscribers for row in report.tiers}
        subscribers[seed_catalog.FREE_TIER_SLUG] -= 1  # the operator's personal team
        self.snapshots.append(
            MonthSnapshot(
                month=f"{month_start:%Y-%m}",
                mrr_cents=report.mrr_by_currency.get("usd", 0),
                teams=sum(not team.left for team in self.teams) + len(self.licensees),
                subscribers_by_tier=subscribers,
            )
        )
        for team in self.teams:
            for (tier_slug, code), count in sorted(team.refusals.items()):
                refusals.refusal_count(
                    team_id=team.team_id, tier_slug=tier_slug, code=code, now=month_start, count=count
                )
            team.refusals.clear()
        refusals.refusal_counts_flush()
        # The month's usage into the hour and day rollups the dashboard and usage API read (the beat
        # task's work, here once a month: a single process writes, so every record is committed).
        usage_rollup_fold()
        if self.partners:
            partner_statements_issue(now=self.now)

    # --- Customers -----------------------------------------------------------------------------------

    def _arrive(self, arrived: list[SimTeam]) -> None:
        """The day's new customers sign up (``users_create``: a user and a personal team on the free
        tier each, in batches), then those whose segment starts on a paid tier go through checkout one by
        one, in order of arrival."""
        for first in range(0, len(arrived), SIGNUP_BATCH):
            batch = arrived[first : first + SIGNUP_BATCH]
            created = users_create(emails=[f"{team.key}@{EMAIL_DOMAIN}" for team in batch])
            for team, (_, personal_team) in zip(batch, created, strict=True):
                team.team = personal_team
        for team in arrived:
            tier = self.tiers[team.segment.start_tier]
            if tier.is_paid:
                self._move_to(team, tier)

    def _act(self, team: SimTeam, what: str, action: Callable[[], Any]) -> Any:
        """Run one customer action; a refusal (a declined card, a change not allowed now) is what a
        customer would see as an error: counted, and the run goes on."""
        try:
            with transaction.atomic():
                return action()
        except ApplicationError as exc:
            self.diagnostics[f"refused: {what}: {exc.code}"] += 1
            return None

    def _move_to(self, team: SimTeam, tier: Tier) -> None:
        """To a dearer tier: checkout with the team's card (a trial, or charged now), or for a tier
        not open to sign-up (Enterprise) the card on file and an operator's move."""
        if not tier.is_public:
            if not team.has_card and self._act(
                team, "card", lambda: payment_method_update(team=team.team, payment_method=team.card, now=self.now)
            ):
                team.has_card = True
            sub = subscription_current(team=team.team)
            self._act(
                team,
                "contract",
                lambda: subscription_tier_set_by_operator(
                    subscription=sub, tier=tier, actor=self.operator, reason="Contract signed (simulated)", now=self.now
                ),
            )
            return
        card = None if team.has_card else team.card
        result = self._act(
            team, "checkout", lambda: subscription_change(team=team.team, tier=tier, payment_method=card, now=self.now)
        )
        if card is not None and (result is not None or self._card_on_file(team)):
            team.has_card = True
        if result is None:
            return
        behaviour = team.segment.behaviour
        if result.change == "trial_started" and team.once("trial", self.today) >= behaviour.trial_conversion:
            days = int(team.once("trial-cancel-day", self.today) * max(tier.trial_days, 1))
            team.trial_cancel_on = self.today + dt.timedelta(days=days)
        if (
            tier.bills_overage
            and behaviour.spend_cap_share
            and team.once("cap", self.today) < behaviour.spend_cap_share
        ):
            cap = int(tier.price_cents * behaviour.spend_cap_multiple)
            self._act(
                team,
                "spend_cap",
                lambda: subscription_spend_cap_set(team=team.team, cap_cents=cap, hard=True, now=self.now),
            )

    @staticmethod
    def _card_on_file(team: SimTeam) -> bool:
        return BillingCustomer.objects.filter(team=team.team).exclude(default_payment_method_id="").exists()

    def _price_ratio(self, tier: Tier) -> float:
        """Price now / reference price (simulation.scenario.TierSpec): raised to the segment's price
        elasticity, it multiplies churn on the tier and divides the chance of moving up to it."""
        spec = self.scenario.tiers.get(tier.slug)
        if spec is None or not spec.reference_price_cents or not tier.price_cents:
            return 1.0
        return tier.price_cents / spec.reference_price_cents

    def _ladder_step(self, team: SimTeam, tier: Tier, step: int) -> Tier | None:
        ladder = team.segment.behaviour.ladder
        if tier.slug in ladder:
            index = ladder.index(tier.slug) + step
            return self.tiers[ladder[index]] if 0 <= index < len(ladder) else None
        if step > 0:
            above = [slug for slug in ladder if self.tiers[slug].price_cents > tier.price_cents]
            return self.tiers[above[0]] if above else None
        return None

    def _decide(self, team: SimTeam) -> None:
        entitlements = team.entitlements
        tier = self.tiers[entitlements.tier_slug]
        behaviour = team.segment.behaviour
        draws = team.draws
        days = self.days_in_month
        status = entitlements.subscription_status
        if team.trial_cancel_on is not None and self.today >= team.trial_cancel_on:
            team.trial_cancel_on = None
            self._act(team, "trial_cancel", lambda: subscription_cancel(team=team.team, now=self.now))
            return
        if status == Subscription.Status.PAST_DUE:
            if draws[CARD_FIX] < behaviour.fix_card_in_dunning:
                self._act(
                    team,
                    "card_fix",
                    lambda: payment_method_update(team=team.team, payment_method=WORKING_CARD, now=self.now),
                )
            return
        if team.churning or status not in (Subscription.Status.ACTIVE, Subscription.Status.TRIALING):
            return
        elasticity = behaviour.price_elasticity
        if tier.is_paid and status == Subscription.Status.ACTIVE:
            if behaviour.churn_per_month:
                self.diagnostics["team-days paying, may cancel"] += 1
            churn = daily_probability(behaviour.churn_per_month * self._price_ratio(tier) ** elasticity, days)
            # The chance taken today, summed: the cancellations the parameters imply for this exposure.
            self.diagnostics["cancel chance, millionths"] += round(churn * 1_000_000)
            if draws[CHURN] < churn:
                self.diagnostics["decided: cancel"] += 1
                self._churn(team)
                return
            fail = behaviour.card_failure_per_month
            if draws[CARD_FAILS] < daily_probability(fail, days):
                self._act(
                    team,
                    "card_fails",
                    lambda: payment_method_update(team=team.team, payment_method=FAILING_CARD, now=self.now),
                )
            down = behaviour.downgrade_per_month
            if not team.downgrade_pending and draws[DOWNGRADE] < daily_probability(down, days):
                lower = self._ladder_step(team, tier, -1)
                if lower is not None and self._act(
                    team, "downgrade", lambda: subscription_change(team=team.team, tier=lower, now=self.now)
                ):
                    team.downgrade_pending = True
                return
        wish = behaviour.upgrade_when_refused if team.refused_yesterday else 0.0
        if not wish and team.near_limit:
            wish = behaviour.upgrade_near_limit
        if not wish:
            return
        higher = self._ladder_step(team, tier, +1)
        if higher is None:
            return
        if draws[UPGRADE] < wish / self._price_ratio(higher) ** elasticity:
            self._move_to(team, higher)

    def _churn(self, team: SimTeam) -> None:
        if self._act(team, "cancel", lambda: subscription_cancel(team=team.team, now=self.now)) is None:
            return
        team.churning = True
        refund = team.segment.behaviour.refund_on_churn
        if refund and team.once("refund", self.today) < refund:
            payment = (
                Payment.objects.filter(invoice__team=team.team, status=Payment.Status.SUCCEEDED)
                .order_by("-created_at", "-id")
                .first()
            )
            if payment is not None:
                self._act(
                    team,
                    "refund",
                    lambda: payment_refund(
                        payment=payment, actor=self.operator, reason="Refund on cancellation (simulated)", now=self.now
                    ),
                )

    # --- Licensees and partners ------------------------------------------------------------------------

    # --- Entitlements and traffic ----------------------------------------------------------------------

    def _entitlements_refresh(self) -> None:
        """Entitlements again for every team whose subscription changed today (its ``updated_at`` is
        today: every change saves it, with the clock at today) or whose tier the catalog changed."""
        changed = set(Subscription.objects.filter(updated_at__gte=self.now).values_list("team_id", flat=True))
        stale = [
            team
            for team in self.teams
            if not team.left
            and (
                team.entitlements is None
                or team.team_id in changed
                or team.entitlements.tier_slug in self.changed_tiers
            )
        ]
        for first in range(0, len(stale), ENTITLEMENTS_BATCH):
            batch = stale[first : first + ENTITLEMENTS_BATCH]
            loaded = entitlements_for_teams(team_ids=[team.team_id for team in batch])
            for team in batch:
                self._entitlements_set(team, loaded[team.team_id])

    def _entitlements_set(self, team: SimTeam, after: Entitlements | None) -> None:
        if team.pending_requests:
            self._usage_flush(team)  # it belongs to the period and model before the change
        before = team.entitlements
        team.entitlements = after
        team.caps = None
        if after is None:
            team.left = True
            return
        if before is not None and before.tier_slug != after.tier_slug:
            team.downgrade_pending = False
            was_paid = self.tiers[before.tier_slug].is_paid
            if was_paid and not self.tiers[after.tier_slug].is_paid and team.churning:
                team.left = True  # the cancel took effect: the customer is gone
        allowed = sorted(after.allowed_models)
        wanted = team.segment.traffic.model
        team.model = wanted if wanted in after.allowed_models else (allowed[0] if allowed else "")

    def _traffic(self) -> None:
        """The day's requests of every team against its limits, in aggregate (simulation/population.py);
        the admitted ones accumulate per team and are written as one usage record per team and week at
        most (see ``_usage_flush``)."""
        today, now = self.today, self.now
        tomorrow = midnight(today + dt.timedelta(days=1))
        boundary = tomorrow.day == 1 or tomorrow.weekday() == 0 or today + dt.timedelta(days=1) == self.scenario.end
        for team in self.teams:
            if team.left:
                continue
            self.team_days += 1
            requests = team.requests_on(today)
            entitlements = team.entitlements
            if not team.model or not entitlements.is_active_at(now):
                self._refuse(team, "subscription_inactive" if team.model else "model_not_allowed", requests)
                if team.pending_requests:
                    self._usage_flush(team)  # nothing more to add until it is active again
                continue
            caps = team.caps
            if caps is None or now >= caps.period_end:
                caps = team.caps = Caps.of(limits_for(entitlements=entitlements, now=now))
                if team.period_start != caps.period_start:
                    # As the quota backends count: a window whose start differs from the counted one
                    # starts again from zero (usage/quotas/database.py), whatever the records hold.
                    team.period_tokens = 0
                    team.period_start = caps.period_start
            traffic = team.segment.traffic
            per_request = traffic.tokens_per_request
            outcome = admit_day(
                requests=requests,
                tokens_per_request=per_request,
                active_minutes=team.active_minutes,
                caps=caps,
                period_tokens=team.period_tokens,
            )
            self._refuse(team, outcome.code, outcome.refused)
            if outcome.admitted:
                if team.pending_requests and team.pending_model != team.model:
                    self._usage_flush(team)
                if not team.pending_requests:
                    team.pending_since, team.pending_model = now, team.model
                team.pending_requests += outcome.admitted
                team.period_tokens += outcome.admitted * per_request
            included = entitlements.monthly_tokens
            team.near_limit = bool(included) and team.period_tokens * 100 >= included * 80
            if team.pending_requests and (boundary or tomorrow >= caps.period_end):
                self._usage_flush(team)
        for first in range(0, len(self.records), RECORD_BATCH):
            usage_records_create_new(events=self.records[first : first + RECORD_BATCH])
        self.records.clear()

    def _refuse(self, team: SimTeam, code: str, count: int) -> None:
        team.refused_yesterday = count > 0
        if count:
            key = (team.entitlements.tier_slug, code)
            team.refusals[key] = team.refusals.get(key, 0) + count

    def _usage_flush(self, team: SimTeam) -> None:
        """The team's admitted requests since ``pending_since`` as usage records (written with the day's
        others): one, dated at the first of those days, or a few if one would overflow a token column.

        A record covers at most the days from a Monday to the Sunday, and never crosses a month or the
        team's billing period: it is written on the day before the next one starts, and before its
        entitlements (and so its period or model) change. So billing's period close (the overage) and
        the analytics by month count exactly what they would count with a record per request."""
        requests = team.pending_requests
        traffic = team.segment.traffic
        prompt = round(traffic.tokens_per_request * traffic.prompt_share)
        completion = traffic.tokens_per_request - prompt
        request_id = f"sim-{team.pending_since:%Y%m%d}"
        parts = -(-(requests * (prompt + completion)) // RECORD_MAX_TOKENS)
        for part in range(parts):
            share = requests // parts + (1 if part < requests % parts else 0)
            self.records.append(
                UsageEvent(
                    request_id=request_id if parts == 1 else f"{request_id}-{part}",
                    team_id=team.team_id,
                    api_key_id=None,
                    model=team.pending_model,
                    prompt_tokens=share * prompt,
                    completion_tokens=share * completion,
                    created_at=team.pending_since,
                )
            )
        team.pending_requests = 0
