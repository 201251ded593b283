"""Licence agreements for licensees above the monthly-active-user threshold (issue 6).

The rule, as in Llama's community licence: a licensee whose products had more than
``TIERLAB_LICENSE_MAU_THRESHOLD`` monthly active users (700 million by default) in the calendar month
before a model's release date needs a separate licence for that model and every later one. Until
operators grant it, the model API refuses the team's requests to those models (``license_required``,
403; usage/metering.py reads ``partners.selectors.license_required_from`` through usage.extensions).

Decisions written down here:
- "Exceeded" is strict: exactly the threshold is not above it.
- The month looked at is the calendar month before the release date, whatever day of the month the
  release falls on (a release on the 1st and one on the 31st of November both look at October).
- One check per release date (``LicenseCheckRun.release_date`` is unique), so a retried or doubled
  beat run flags nobody twice. Several models released the same day share one check.
- A report that arrives (or is corrected upwards) after the check for its month already ran is held
  to that check's rule at once: otherwise reporting late would be a way around the licence.
- A licence, once granted, covers later releases too (one agreement per team, with its fee terms);
  operators who want to renegotiate for a new release do so outside this flow. A refused one keeps
  the team blocked from ``required_from`` on. A correction of the MAU figure downwards does not lift
  a requirement by itself: operators review it (and may grant without a fee).
- Operators' decisions are recorded on the agreement (``decided_by``, ``decided_at``; for a refusal
  the reason goes into ``terms``, since there are no terms to show) and in the admin's history.

The request path caches the gate per process; the agreement's triggers publish every change through the
invalidation feed (core/invalidation.py), so a grant lifts the refusal within
``TIERLAB_AUTH_CACHE_SECONDS``, as revoking an API key takes effect (DESIGN.md).
"""

from __future__ import annotations

import calendar
import logging
import re
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.emails import team_email_send
from accounts.roles import TeamAction, team_role_check
from core.errors import ApplicationError
from core.invalidation import cache_invalidations_apply
from core.periods import add_months, month_first
from partners.models import LicenseAgreement, LicenseCheckRun, MonthlyActiveUsers
from tiers.selectors import language_model_list_active

if TYPE_CHECKING:
    from accounts.models import Team, User

logger = logging.getLogger(__name__)

Status = LicenseAgreement.Status
CURRENCY_RE = re.compile(r"^[a-z]{3}$")
# What a licence agreement states, as the licensee's API and the admin show it.
AGREEMENT_FIELDS = (
    "status",
    "required_from",
    "reported_mau",
    "mau_month",
    "monthly_fee_cents",
    "currency",
    "terms",
    "decided_at",
)


class LicenseError(ApplicationError):
    code = "license_error"


class LicenseNotRequired(LicenseError):
    """The team has no licence agreement (its products were never above the threshold)."""

    status = 404
    code = "license_not_required"


class LicenseStateInvalid(LicenseError):
    """The agreement is not in a state that allows this step (e.g. requesting a granted licence)."""

    status = 409
    code = "license_state_invalid"


# --- Months -------------------------------------------------------------------------------------------


def month_before(day: date) -> date:
    """The first day of the calendar month before ``day``'s month: the month a check for a release on
    ``day`` looks at. Stepping back one day from the 1st lands in the previous month whatever its
    length (28 to 31 days), so there is no month arithmetic to get wrong."""
    return add_months(month_first(day), -1)


def _today(now: datetime) -> date:
    # Release dates and report months are UTC calendar dates, like the billing periods.
    return now.astimezone(UTC).date()


# --- Reads --------------------------------------------------------------------------------------------


def mau_report_list(*, team: Team) -> QuerySet[MonthlyActiveUsers]:
    return MonthlyActiveUsers.objects.filter(team=team).order_by("-month")


def license_agreement_for_team(*, team: Team) -> LicenseAgreement | None:
    return LicenseAgreement.objects.filter(team=team).first()


def license_threshold() -> int:
    return settings.TIERLAB_LICENSE_MAU_THRESHOLD


# --- Reports --------------------------------------------------------------------------------------------


def mau_report_record(
    *, team: Team, month: date, active_users: int, now: datetime | None = None, actor: User | None = None
) -> MonthlyActiveUsers:
    """Record the team's monthly active users for ``month`` (any day of it names the month). One report
    per month: a second report for the same month is a correction and replaces the first. A month
    after the current one cannot be reported. If the check for that month already ran, the report is
    held to it at once (see the module docstring). Owners and admins report (``actor``; None: an
    operator or the system)."""
    now = now or timezone.now()
    team_role_check(team=team, actor=actor, action=TeamAction.LICENSE_MANAGE)
    month = month_first(month)
    if month > month_first(_today(now)):
        raise ValidationError({"month": [f"{month:%Y-%m} has not started yet: report a past or the current month."]})
    with transaction.atomic():
        report = MonthlyActiveUsers.objects.select_for_update().filter(team=team, month=month).first()
        if report is None:
            report = MonthlyActiveUsers(team=team, month=month)
        report.active_users = active_users
        report.reported_at = now
        # The unique (team, month) is what the lookup above keys on: no need to query it again.
        report.full_clean(validate_unique=False, validate_constraints=False)
        try:
            with transaction.atomic():
                report.save()
        except IntegrityError:
            # A concurrent first report for the same month won the insert: this one is the correction.
            report = MonthlyActiveUsers.objects.select_for_update().get(team=team, month=month)
            report.active_users, report.reported_at = active_users, now
            report.save(update_fields=["active_users", "reported_at"])

        run = LicenseCheckRun.objects.filter(mau_month=month).order_by("release_date").first()
        if run is not None and active_users > run.threshold:
            _team_flag(
                team_id=team.pk, release_date=run.release_date, reported_mau=active_users, mau_month=month, now=now
            )
    return report


# --- Checks ---------------------------------------------------------------------------------------------


def _team_flag(*, team_id: int, release_date: date, reported_mau: int, mau_month: date, now: datetime) -> bool:
    """Require a licence of the team from ``release_date`` on. Returns True if that is new (an agreement
    was created). An existing agreement keeps its status; a non-granted one moves its ``required_from``
    earlier if this release is earlier (checks may run out of date order, e.g. for a backdated model)."""
    agreement = LicenseAgreement.objects.select_for_update().filter(team_id=team_id).first()
    if agreement is None:
        try:
            with transaction.atomic():
                agreement = LicenseAgreement.objects.create(
                    team_id=team_id,
                    status=Status.REQUIRED,
                    required_from=release_date,
                    reported_mau=reported_mau,
                    mau_month=mau_month,
                    created_at=now,
                )
        except IntegrityError:
            # Flagged concurrently (a late report racing the check): one agreement per team, theirs stands.
            agreement = LicenseAgreement.objects.select_for_update().get(team_id=team_id)
        else:
            agreement_id = agreement.pk
            transaction.on_commit(lambda: license_required_send(agreement_id=agreement_id))
            return True
    if agreement.status != Status.GRANTED and release_date < agreement.required_from:
        agreement.required_from = release_date
        agreement.reported_mau, agreement.mau_month = reported_mau, mau_month
        agreement.save(update_fields=["required_from", "reported_mau", "mau_month", "updated_at"])
    return False


def license_check_run(*, release_date: date, now: datetime | None = None) -> LicenseCheckRun:
    """The MAU check for one model release date, exactly once: every team whose report for the calendar
    month before ``release_date`` is above the threshold needs a licence from that date on. Running it
    again returns the first run and changes nothing."""
    now = now or timezone.now()
    existing = LicenseCheckRun.objects.filter(release_date=release_date).first()
    if existing is not None:
        return existing
    threshold = license_threshold()
    mau_month = month_before(release_date)
    with transaction.atomic():
        try:
            with transaction.atomic():
                run = LicenseCheckRun.objects.create(
                    release_date=release_date, mau_month=mau_month, threshold=threshold, run_at=now
                )
        except IntegrityError:
            # Another worker ran it first (the unique date serialises the two): theirs is the run.
            return LicenseCheckRun.objects.get(release_date=release_date)
        reports = MonthlyActiveUsers.objects.filter(month=mau_month, active_users__gt=threshold).order_by("team_id")
        flagged = 0
        for team_id, active_users in reports.values_list("team_id", "active_users"):
            _team_flag(
                team_id=team_id, release_date=release_date, reported_mau=active_users, mau_month=mau_month, now=now
            )
            flagged += 1
        run.flagged = flagged
        run.save(update_fields=["flagged"])
    logger.info(
        "licence check for %s (MAU of %s > %s): %s team(s) flagged", release_date, mau_month, threshold, flagged
    )
    return run


def license_checks_run(*, now: datetime | None = None) -> int:
    """Run the check for every active model's release date up to today that has none yet, oldest first.
    Returns how many checks ran. Cheap when there is nothing to do (two small queries), so beat runs
    it hourly; a model released today is checked within the hour."""
    now = now or timezone.now()
    done = LicenseCheckRun.objects.values_list("release_date", flat=True)
    due = sorted(
        set(
            language_model_list_active()
            .filter(released_on__lte=_today(now))
            .exclude(released_on__in=done)
            .values_list("released_on", flat=True)
        )
    )
    for release_date in due:
        license_check_run(release_date=release_date, now=now)
    return len(due)


# --- The licensee's request and the operators' decision ------------------------------------------------


def _agreement_locked(*, team_id: int) -> LicenseAgreement:
    agreement = LicenseAgreement.objects.select_for_update().filter(team_id=team_id).first()
    if agreement is None:
        raise LicenseNotRequired("Your team has no licence agreement: none is required.")
    return agreement


def license_request(*, team: Team, now: datetime | None = None, actor: User | None = None) -> LicenseAgreement:
    """The licensee asks for the licence: required -> requested. Asking again while it is requested
    changes nothing (a client retry is harmless); a decided agreement cannot be requested again.
    Owners and admins ask (``actor``; None: the system)."""
    now = now or timezone.now()
    team_role_check(team=team, actor=actor, action=TeamAction.LICENSE_MANAGE)
    with transaction.atomic():
        agreement = _agreement_locked(team_id=team.pk)
        if agreement.status == Status.REQUESTED:
            return agreement
        if agreement.status != Status.REQUIRED:
            raise LicenseStateInvalid(
                f"The licence agreement is {agreement.get_status_display().lower()}: it cannot be requested again."
            )
        agreement.status = Status.REQUESTED
        agreement.save(update_fields=["status", "updated_at"])
    return agreement


def license_grant(
    *,
    agreement: LicenseAgreement,
    actor: User | None,
    monthly_fee_cents: int,
    currency: str,
    terms: str,
    now: datetime | None = None,
) -> LicenseAgreement:
    """Operators grant the licence on fee terms (integer cents per month + ISO currency, lower case).
    From then the model API serves the team every model again (within the gate cache's TTL). A refused
    agreement may be granted after all; a granted one cannot be granted twice."""
    now = now or timezone.now()
    if monthly_fee_cents < 0:
        raise ValidationError({"monthly_fee_cents": ["The monthly fee cannot be negative."]})
    currency = currency.strip().lower()
    if not CURRENCY_RE.match(currency):
        raise ValidationError({"currency": ["A three-letter ISO 4217 code, e.g. usd."]})
    with transaction.atomic():
        locked = _agreement_locked(team_id=agreement.team_id)
        if locked.status == Status.GRANTED:
            raise LicenseStateInvalid(f"{locked} is already granted.")
        locked.status = Status.GRANTED
        locked.monthly_fee_cents = monthly_fee_cents
        locked.currency = currency
        locked.terms = terms.strip()
        locked.decided_by = actor
        locked.decided_at = now
        locked.full_clean()
        locked.save()
        transaction.on_commit(lambda: license_decided_send(agreement_id=locked.pk))
        # This process serves the team again at once (its feed read now); the others at their next poll.
        transaction.on_commit(cache_invalidations_apply)
    return locked


def license_refuse(
    *, agreement: LicenseAgreement, actor: User | None, reason: str, now: datetime | None = None
) -> LicenseAgreement:
    """Operators refuse the licence: the team stays blocked from ``required_from`` on. The reason is
    kept in ``terms`` and emailed to the team's owners. Only an undecided agreement can be refused."""
    now = now or timezone.now()
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": ["Give the reason: it is sent to the licensee."]})
    with transaction.atomic():
        locked = _agreement_locked(team_id=agreement.team_id)
        if locked.status not in (Status.REQUIRED, Status.REQUESTED):
            raise LicenseStateInvalid(f"{locked} is already decided ({locked.get_status_display().lower()}).")
        locked.status = Status.REFUSED
        locked.monthly_fee_cents = 0
        locked.terms = reason
        locked.decided_by = actor
        locked.decided_at = now
        locked.full_clean()
        locked.save()
        transaction.on_commit(lambda: license_decided_send(agreement_id=locked.pk))
    return locked


# --- Emails -------------------------------------------------------------------------------------------
# Sent after the commit, to the team's owners. As with the billing emails (accounts/emails.py), a failing
# mail server is logged, not raised: the state change has happened, and a retried check must not fail.


def _month_name(month: date) -> str:
    return f"{calendar.month_name[month.month]} {month.year}"


def _send(*, team_id: int, subject: str, template: str, context: dict) -> bool:
    return team_email_send(team_id=team_id, subject=subject, template=f"partners/email/{template}.txt", context=context)


def license_required_send(*, agreement_id: int) -> bool:
    agreement = LicenseAgreement.objects.select_related("team").get(pk=agreement_id)
    return _send(
        team_id=agreement.team_id,
        subject="A licence agreement is required for new models",
        template="license_required",
        context={
            "agreement": agreement,
            "team_name": agreement.team.name,
            "mau_month": _month_name(agreement.mau_month),
            "reported_mau": f"{agreement.reported_mau:,}",
            "threshold": f"{license_threshold():,}",
        },
    )


def license_decided_send(*, agreement_id: int) -> bool:
    from core.templatetags.tier_format import money

    agreement = LicenseAgreement.objects.select_related("team").get(pk=agreement_id)
    granted = agreement.status == Status.GRANTED
    return _send(
        team_id=agreement.team_id,
        subject="Your licence agreement is granted" if granted else "Your licence request was refused",
        template="license_decided",
        context={
            "agreement": agreement,
            "team_name": agreement.team.name,
            "granted": granted,
            "fee": money(agreement.monthly_fee_cents, agreement.currency),
        },
    )
