"""The channels beyond the teams' own subscriptions: hosting partners reporting their customers'
usage (and owing a share of it), and licensees reporting their monthly active users (and paying for a
licence once above the threshold). Each goes through TierLab's own services: the partner ingest and
share rates (partners.services), MAU reports, licence checks, requests and grants (partners.licensing).
They live in shard 0 of a run (simulation/engine.py)."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from accounts.selectors import team_for_user
from core.periods import add_months
from partners import licensing
from partners.models import LicenseAgreement
from partners.services import partner_create, partner_share_rate_set, partner_usage_events_ingest
from simulation.population import DAYS_PER_MONTH, lognormal_unit, stream, whole
from tiers.services import user_create

if TYPE_CHECKING:
    from accounts.models import Team, User
    from simulation.scenario import LicenseeSpec, PartnerSpec

INGEST_BATCH = 1_000  # the partner API's most events per request


@dataclass
class PartnerChannel:
    """A hosting partner: its customers' usage of the day, reported through the ingest service."""

    spec: PartnerSpec
    partner_id: int
    rng: random.Random

    @classmethod
    def create(cls, *, spec: PartnerSpec, seed: int, email_domain: str) -> PartnerChannel:
        partner, _ = partner_create(
            slug=spec.slug,
            name=spec.name,
            share_bps=spec.share_bps,
            contact_email=f"{spec.slug}@partners.{email_domain}",
        )
        for effective_from, share_bps in spec.share_changes:
            partner_share_rate_set(partner=partner, share_bps=share_bps, effective_from=effective_from)
        return cls(spec=spec, partner_id=partner.pk, rng=stream(seed, "partner", spec.slug))

    def report_day(self, *, today: dt.date, now: dt.datetime, start: dt.date) -> None:
        """One event per customer for the day (tokens, and what the partner billed for them)."""
        spec, rng = self.spec, self.rng
        moment = now.isoformat().replace("+00:00", "Z")
        per_customer = spec.tokens_per_customer_per_day * (1.0 + spec.growth_per_month) ** (
            (today - start).days / DAYS_PER_MONTH
        )
        events = []
        for customer in range(spec.customers):
            tokens = whole(rng, per_customer * lognormal_unit(rng, spec.daily_variation))
            if not tokens:
                continue
            prompt = tokens * 3 // 4
            events.append(
                {
                    "event_id": f"{spec.slug}-{customer}-{today:%Y%m%d}",
                    "customer": f"{spec.slug}-customer-{customer}",
                    "model": spec.model,
                    "prompt_tokens": prompt,
                    "completion_tokens": tokens - prompt,
                    "amount_cents": (tokens * spec.price_cents_per_million_tokens + 500_000) // 1_000_000,
                    "currency": "usd",
                    "time": moment,
                }
            )
        for first in range(0, len(events), INGEST_BATCH):
            result = partner_usage_events_ingest(
                partner_id=self.partner_id, events=events[first : first + INGEST_BATCH], now=now
            )
            if result.rejected:
                raise RuntimeError(f"partner {spec.slug}: events refused by the ingest: {result.errors[:3]}")


@dataclass
class Licensee:
    """A licensee: its MAU reported after each month; once flagged by a licence check, it asks for
    the licence and an operator grants it, after the scenario's delays."""

    spec: LicenseeSpec
    team: Team
    requested_on: dt.date | None = None

    @classmethod
    def create(cls, *, spec: LicenseeSpec, email_domain: str) -> Licensee:
        user = user_create(email=f"{spec.name}@licensees.{email_domain}")
        return cls(spec=spec, team=team_for_user(user=user))

    def mau(self, *, month: dt.date, start: dt.date) -> int:
        index = (month.year - start.year) * 12 + month.month - start.month
        return int(self.spec.mau_start * (1.0 + self.spec.mau_growth_per_month) ** index)

    def step(self, *, today: dt.date, now: dt.datetime, operator: User) -> None:
        agreement = licensing.license_agreement_for_team(team=self.team)
        if agreement is None:
            return
        spec = self.spec
        flagged_on = agreement.created_at.date()
        requested_on = self.requested_on or today
        if agreement.status == LicenseAgreement.Status.REQUIRED and today >= flagged_on + dt.timedelta(
            days=spec.request_after_days
        ):
            licensing.license_request(team=self.team, now=now)
            self.requested_on = today
        elif agreement.status == LicenseAgreement.Status.REQUESTED and today >= requested_on + dt.timedelta(
            days=spec.grant_after_days
        ):
            licensing.license_grant(
                agreement=agreement,
                actor=operator,
                monthly_fee_cents=spec.monthly_fee_cents,
                currency="usd",
                terms="Simulated licence agreement.",
                now=now,
            )


def licensees_day(
    *, licensees: list[Licensee], today: dt.date, now: dt.datetime, start: dt.date, operator: User
) -> None:
    """The licensees' day: on the 1st, last month's MAU reports; the licence checks due (one per model
    release date); then each licensee's next step."""
    if not licensees:
        return
    if today.day == 1 and today != start:
        month = add_months(today, -1)
        for licensee in licensees:
            licensing.mau_report_record(
                team=licensee.team, month=month, active_users=licensee.mau(month=month, start=start), now=now
            )
    licensing.license_checks_run(now=now)
    for licensee in licensees:
        licensee.step(today=today, now=now, operator=operator)
