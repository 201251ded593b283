"""Licence agreements (issue 6): the MAU rule at its boundaries, the check run per release date, the
model API's refusal and the grant lifting it, and the operators' admin."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime

import pytest
import time_machine
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts import services as account_services
from accounts.selectors import team_for_user
from partners import licensing
from partners.models import LicenseAgreement, LicenseCheckRun, MonthlyActiveUsers
from partners.selectors import license_required_from
from partners.tasks import license_checks_run as license_checks_task
from tests.factories import LanguageModelFactory, TierFactory
from tiers import services as tier_services
from tiers.models import LanguageModel, Subscription
from tiers.selectors import entitlements_cache_clear
from tiers.services import operator_ensure
from usage.metering import metering_caches_clear

pytestmark = pytest.mark.django_db

THRESHOLD = 700_000_000
OLD_MODEL = "Llama-3.3-8B-Instruct"  # seed catalog: released 2024-12-06
NEW_MODEL = "Llama-5-Test-Instruct"
NEW_RELEASE = date(2026, 11, 1)
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CHAT = "/v1/chat/completions"


def _team(email: str):
    return team_for_user(user=tier_services.user_create(email=email))


def _model(model_id: str, released_on: date) -> LanguageModel:
    model = LanguageModelFactory(model_id=model_id, released_on=released_on)
    metering_caches_clear()
    return model


@pytest.fixture
def teams(catalog):
    return {name: _team(f"{name}@example.com") for name in ("big", "small")}


# --- The MAU rule at its boundaries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "looked_at"),
    [
        (date(2026, 11, 1), date(2026, 10, 1)),  # the 1st: the previous month, not the release month
        (date(2026, 10, 31), date(2026, 9, 1)),  # the last day of a 31-day month: still the previous one
        (date(2026, 11, 30), date(2026, 10, 1)),  # the last day of a 30-day month
        (date(2027, 1, 1), date(2026, 12, 1)),  # across the year
        (date(2027, 3, 1), date(2027, 2, 1)),  # after a 28-day February
        (date(2028, 2, 29), date(2028, 1, 1)),  # leap day
    ],
)
def test_the_month_looked_at_is_the_calendar_month_before_the_release(release, looked_at):
    assert licensing.month_before(release) == looked_at


def test_exactly_the_threshold_is_not_exceeded_one_more_is(teams, settings):
    settings.TIERLAB_LICENSE_MAU_THRESHOLD = THRESHOLD
    licensing.mau_report_record(team=teams["small"], month=date(2026, 10, 1), active_users=THRESHOLD, now=NOW)
    licensing.mau_report_record(team=teams["big"], month=date(2026, 10, 1), active_users=THRESHOLD + 1, now=NOW)
    run = licensing.license_check_run(release_date=NEW_RELEASE, now=NOW)
    assert (run.mau_month, run.threshold, run.flagged) == (date(2026, 10, 1), THRESHOLD, 1)
    assert list(LicenseAgreement.objects.values_list("team_id", "status", "required_from", "reported_mau")) == [
        (teams["big"].pk, "required", NEW_RELEASE, THRESHOLD + 1)
    ]


def test_the_threshold_is_the_setting(teams, settings):
    settings.TIERLAB_LICENSE_MAU_THRESHOLD = 1_000
    licensing.mau_report_record(team=teams["small"], month=date(2026, 10, 1), active_users=1_001, now=NOW)
    assert licensing.license_check_run(release_date=NEW_RELEASE, now=NOW).threshold == 1_000
    assert LicenseAgreement.objects.get().team == teams["small"]


def test_release_on_the_first_looks_at_the_previous_month_only(teams):
    # "big" was above the threshold in October, "small" only in November (the release month).
    licensing.mau_report_record(team=teams["big"], month=date(2026, 10, 1), active_users=800_000_000, now=NOW)
    licensing.mau_report_record(team=teams["small"], month=date(2026, 11, 1), active_users=900_000_000, now=NOW)
    licensing.mau_report_record(team=teams["small"], month=date(2026, 10, 1), active_users=1, now=NOW)
    _model(NEW_MODEL, NEW_RELEASE)
    with time_machine.travel(datetime(2026, 11, 1, 0, 30, tzinfo=UTC), tick=False):
        assert license_checks_task() == 3  # the two seed release dates and 2026-11-01
    assert LicenseCheckRun.objects.get(release_date=NEW_RELEASE).mau_month == date(2026, 10, 1)
    assert list(LicenseAgreement.objects.values_list("team_id", flat=True)) == [teams["big"].pk]


def test_release_on_the_last_day_of_a_month_looks_at_the_month_before_it(teams):
    # Released Oct 31: September counts, October (the release month, above the threshold) does not.
    licensing.mau_report_record(team=teams["big"], month=date(2026, 9, 1), active_users=700_000_001, now=NOW)
    licensing.mau_report_record(team=teams["small"], month=date(2026, 10, 1), active_users=999_000_000, now=NOW)
    _model(NEW_MODEL, date(2026, 10, 31))
    with time_machine.travel(datetime(2026, 10, 31, 23, 59, tzinfo=UTC), tick=False):
        licensing.license_checks_run()
    run = LicenseCheckRun.objects.get(release_date=date(2026, 10, 31))
    assert (run.mau_month, run.flagged) == (date(2026, 9, 1), 1)
    agreement = LicenseAgreement.objects.get()
    assert (agreement.team, agreement.required_from, agreement.mau_month) == (
        teams["big"],
        date(2026, 10, 31),
        date(2026, 9, 1),
    )


def test_checks_skip_future_and_inactive_releases(catalog):
    _model(NEW_MODEL, date(2026, 12, 15))
    inactive = _model("Llama-Retired", date(2026, 6, 1))
    inactive.is_active = False
    inactive.save()
    with time_machine.travel(datetime(2026, 12, 14, 23, 0, tzinfo=UTC), tick=False):
        assert licensing.license_checks_run() == 2  # the seed dates only
    with time_machine.travel(datetime(2026, 12, 15, 0, 0, tzinfo=UTC), tick=False):
        assert licensing.license_checks_run() == 1
    assert not LicenseCheckRun.objects.filter(release_date=date(2026, 6, 1)).exists()


# --- Idempotency and how agreements evolve ---------------------------------------------------------------


def test_check_run_twice_gives_one_run_and_one_agreement(teams, django_capture_on_commit_callbacks):
    licensing.mau_report_record(team=teams["big"], month=date(2026, 10, 1), active_users=800_000_000, now=NOW)
    with django_capture_on_commit_callbacks(execute=True):
        first = licensing.license_check_run(release_date=NEW_RELEASE, now=NOW)
        second = licensing.license_check_run(release_date=NEW_RELEASE, now=datetime(2026, 11, 21, tzinfo=UTC))
        assert second.pk == first.pk and second.run_at == NOW
        _model(NEW_MODEL, NEW_RELEASE)
        assert licensing.license_checks_run(now=NOW) == 2  # only the seed dates are left to check
        assert licensing.license_checks_run(now=NOW) == 0
    assert LicenseCheckRun.objects.filter(release_date=NEW_RELEASE).count() == 1
    assert LicenseAgreement.objects.count() == 1
    # The licensee is told once, when the licence became required.
    assert [m.to for m in mail.outbox] == [["big@example.com"]]
    assert "required" in mail.outbox[0].subject and "800,000,000" in mail.outbox[0].body


def test_a_later_release_keeps_the_earlier_date_and_an_earlier_one_moves_it(teams):
    for month in (date(2026, 9, 1), date(2026, 10, 1), date(2026, 11, 1)):
        licensing.mau_report_record(team=teams["big"], month=month, active_users=750_000_000, now=NOW)
    licensing.license_check_run(release_date=NEW_RELEASE, now=NOW)
    licensing.license_check_run(release_date=date(2026, 12, 5), now=NOW)
    assert LicenseAgreement.objects.get().required_from == NEW_RELEASE
    # A model backdated into October is checked after the November one: the earlier date wins.
    licensing.license_check_run(release_date=date(2026, 10, 10), now=NOW)
    agreement = LicenseAgreement.objects.get()
    assert (agreement.required_from, agreement.mau_month) == (date(2026, 10, 10), date(2026, 9, 1))


def test_a_granted_licence_covers_later_releases(teams, operator):
    licensing.mau_report_record(team=teams["big"], month=date(2026, 10, 1), active_users=750_000_000, now=NOW)
    licensing.license_check_run(release_date=NEW_RELEASE, now=NOW)
    licensing.license_grant(
        agreement=LicenseAgreement.objects.get(), actor=operator, monthly_fee_cents=1, currency="usd", terms="", now=NOW
    )
    licensing.mau_report_record(team=teams["big"], month=date(2026, 11, 1), active_users=900_000_000, now=NOW)
    licensing.license_check_run(release_date=date(2026, 12, 1), now=NOW)
    agreement = LicenseAgreement.objects.get()
    assert (agreement.status, agreement.required_from) == ("granted", NEW_RELEASE)
    assert license_required_from(team_id=teams["big"].pk) is None


def test_a_late_report_is_held_to_the_check_that_already_ran(teams):
    licensing.license_check_run(release_date=NEW_RELEASE, now=NOW)
    assert not LicenseAgreement.objects.exists()
    licensing.mau_report_record(team=teams["small"], month=date(2026, 10, 1), active_users=THRESHOLD, now=NOW)
    assert not LicenseAgreement.objects.exists()
    # A correction upwards, after the check for October: required from that release on.
    licensing.mau_report_record(team=teams["small"], month=date(2026, 10, 1), active_users=THRESHOLD + 5, now=NOW)
    agreement = LicenseAgreement.objects.get()
    assert (agreement.team, agreement.required_from, agreement.reported_mau) == (
        teams["small"],
        NEW_RELEASE,
        THRESHOLD + 5,
    )
    assert MonthlyActiveUsers.objects.get(team=teams["small"]).active_users == THRESHOLD + 5


def test_a_correction_replaces_the_report_and_future_months_are_refused(teams):
    later = datetime(2026, 11, 25, tzinfo=UTC)
    licensing.mau_report_record(team=teams["big"], month=date(2026, 10, 17), active_users=5, now=NOW)
    licensing.mau_report_record(team=teams["big"], month=date(2026, 10, 1), active_users=6, now=later)
    report = MonthlyActiveUsers.objects.get()
    assert (report.month, report.active_users, report.reported_at) == (date(2026, 10, 1), 6, later)
    licensing.mau_report_record(team=teams["big"], month=date(2026, 11, 1), active_users=7, now=NOW)  # current
    with pytest.raises(ValidationError) as error:
        licensing.mau_report_record(team=teams["big"], month=date(2026, 12, 1), active_users=7, now=NOW)
    assert "month" in error.value.message_dict
    with pytest.raises(ValidationError):
        licensing.mau_report_record(team=teams["big"], month=date(2026, 9, 1), active_users=-1, now=NOW)
    assert MonthlyActiveUsers.objects.count() == 2


def test_request_grant_refuse_state_rules(teams, operator, django_capture_on_commit_callbacks):
    with pytest.raises(licensing.LicenseNotRequired):
        licensing.license_request(team=teams["big"], now=NOW)
    licensing.mau_report_record(team=teams["big"], month=date(2026, 10, 1), active_users=THRESHOLD + 1, now=NOW)
    licensing.license_check_run(release_date=NEW_RELEASE, now=NOW)
    assert licensing.license_request(team=teams["big"], now=NOW).status == "requested"
    assert licensing.license_request(team=teams["big"], now=NOW).status == "requested"  # a retry is harmless
    agreement = LicenseAgreement.objects.get()
    with pytest.raises(ValidationError):
        licensing.license_grant(
            agreement=agreement, actor=operator, monthly_fee_cents=100, currency="dollars", terms="", now=NOW
        )
    with pytest.raises(ValidationError):
        licensing.license_refuse(agreement=agreement, actor=operator, reason="  ", now=NOW)
    with django_capture_on_commit_callbacks(execute=True):
        refused = licensing.license_refuse(agreement=agreement, actor=operator, reason="Competing product", now=NOW)
    assert (refused.status, refused.terms, refused.decided_by, refused.decided_at) == (
        "refused",
        "Competing product",
        operator,
        NOW,
    )
    with pytest.raises(licensing.LicenseStateInvalid):
        licensing.license_request(team=teams["big"], now=NOW)
    with pytest.raises(licensing.LicenseStateInvalid):
        licensing.license_refuse(agreement=refused, actor=operator, reason="again", now=NOW)
    with django_capture_on_commit_callbacks(execute=True):
        granted = licensing.license_grant(
            agreement=refused, actor=operator, monthly_fee_cents=2_500_000, currency="EUR", terms="Net 30", now=NOW
        )
    assert (granted.status, granted.monthly_fee_cents, granted.currency, granted.terms) == (
        "granted",
        2_500_000,
        "eur",
        "Net 30",
    )
    with pytest.raises(licensing.LicenseStateInvalid):
        licensing.license_grant(agreement=granted, actor=operator, monthly_fee_cents=1, currency="usd", terms="")
    subjects = [m.subject for m in mail.outbox]
    assert any("refused" in s for s in subjects) and any("granted" in s for s in subjects)
    assert "25,000.00" in mail.outbox[-1].body


# --- The model API's refusal ------------------------------------------------------------------------------


@pytest.fixture
def operator(catalog):
    user, _ = operator_ensure(email="ops@example.com", password="operator-password-1")
    return user


@pytest.fixture
def api(catalog):
    """Two teams on a tier with the old and a new model, each with a real API key; "big" is flagged
    for the release of the new model (October MAU above the threshold), "small" is not."""
    new = _model(NEW_MODEL, NEW_RELEASE)
    tier = TierFactory(
        slug="licensing-test",
        name="Licensing test",
        free=True,
        allowed_models=LanguageModel.objects.filter(model_id__in=[OLD_MODEL, new.model_id]),
    )
    secrets = {}
    teams = {}
    for name, mau in (("big", THRESHOLD + 1), ("small", THRESHOLD)):
        team = _team(f"{name}@example.com")
        Subscription.objects.filter(team=team).update(tier=tier)
        licensing.mau_report_record(team=team, month=date(2026, 10, 1), active_users=mau, now=NOW)
        _, secrets[name] = account_services.api_key_create(team=team, name="test")
        teams[name] = team
    entitlements_cache_clear()
    licensing.license_check_run(release_date=NEW_RELEASE, now=NOW)
    return teams, secrets


def _chat(secret: str, model: str):
    body = {"model": model, "messages": [{"role": "user", "content": "What is a llama?"}], "max_completion_tokens": 8}
    return Client().post(CHAT, json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")


def test_a_flagged_team_is_refused_newer_models_until_granted(api, operator, django_capture_on_commit_callbacks):
    teams, secrets = api
    refused = _chat(secrets["big"], NEW_MODEL)
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert (error["code"], error["type"], error["param"]) == ("license_required", "permission_error", "model")
    assert _chat(secrets["big"], OLD_MODEL).status_code == 200  # released before the date
    assert _chat(secrets["small"], NEW_MODEL).status_code == 200  # exactly the threshold: not flagged

    licensing.license_request(team=teams["big"], now=NOW)
    metering_caches_clear()
    assert _chat(secrets["big"], NEW_MODEL).status_code == 403  # requested is not granted

    assert _chat(secrets["big"], NEW_MODEL).status_code == 403  # the gate is cached in this process
    with django_capture_on_commit_callbacks(execute=True):
        licensing.license_grant(
            agreement=LicenseAgreement.objects.get(team=teams["big"]),
            actor=operator,
            monthly_fee_cents=2_500_000,
            currency="usd",
            terms="Annual review",
            now=NOW,
        )
    # No cache clearing here: the grant itself drops this process's cached gate.
    assert _chat(secrets["big"], NEW_MODEL).status_code == 200


def test_a_refused_team_stays_blocked(api, operator):
    teams, secrets = api
    licensing.license_refuse(
        agreement=LicenseAgreement.objects.get(team=teams["big"]), actor=operator, reason="No", now=NOW
    )
    metering_caches_clear()
    assert _chat(secrets["big"], NEW_MODEL).json()["error"]["code"] == "license_required"
    assert _chat(secrets["big"], OLD_MODEL).status_code == 200
    assert _chat(secrets["small"], NEW_MODEL).status_code == 200


# --- The operators' admin -------------------------------------------------------------------------------


@pytest.fixture
def ops(operator):
    client = Client()
    client.force_login(operator)
    return client


def _changelist(model: str) -> str:
    return reverse(f"admin:partners_{model}_changelist")


def _run_action(ops, action: str, objects, **form):
    url = _changelist("licenseagreement")
    selected = [str(obj.pk) for obj in objects]
    first = ops.post(url, {"action": action, "_selected_action": selected})
    assert first.status_code == 200 and b'name="apply"' in first.content
    return ops.post(url, {"action": action, "_selected_action": selected, "apply": "1", **form}, follow=True)


def test_admin_lists_filters_and_grants_with_fee_terms(api, ops, operator):
    teams, secrets = api
    agreement = LicenseAgreement.objects.get(team=teams["big"])
    page = ops.get(_changelist("licenseagreement"), {"status__exact": "required"})
    assert page.status_code == 200 and list(page.context["cl"].result_list) == [agreement]
    assert not ops.get(_changelist("licenseagreement"), {"status__exact": "granted"}).context["cl"].result_list

    invalid = _run_action(ops, "grant_licenses", [agreement], monthly_fee_cents="-5", currency="US Dollars")
    assert invalid.status_code == 200 and invalid.context["form"].errors.keys() == {"monthly_fee_cents", "currency"}
    agreement.refresh_from_db()
    assert agreement.status == "required"

    _run_action(ops, "grant_licenses", [agreement], monthly_fee_cents="25000.00", currency="usd", terms="Net 30")
    agreement.refresh_from_db()
    assert (agreement.status, agreement.monthly_fee_cents, agreement.terms, agreement.decided_by) == (
        "granted",
        2_500_000,
        "Net 30",
        operator,
    )
    metering_caches_clear()
    assert _chat(secrets["big"], NEW_MODEL).status_code == 200
    assert "$25,000.00" in ops.get(_changelist("licenseagreement")).content.decode()
    # A second grant is refused by the service and reported, not a server error.
    again = _run_action(ops, "grant_licenses", [agreement], monthly_fee_cents="1", currency="usd")
    assert "already granted" in again.content.decode()


def test_admin_refuses_with_a_reason(api, ops, operator):
    teams, secrets = api
    agreement = LicenseAgreement.objects.get(team=teams["big"])
    _run_action(ops, "refuse_licenses", [agreement], reason="Competing product")
    agreement.refresh_from_db()
    assert (agreement.status, agreement.terms, agreement.decided_by) == ("refused", "Competing product", operator)
    metering_caches_clear()
    assert _chat(secrets["big"], NEW_MODEL).status_code == 403


def test_admin_runs_checks_without_a_selection_and_check_runs_are_read_only(teams, ops):
    licensing.mau_report_record(team=teams["big"], month=date(2026, 10, 1), active_users=THRESHOLD + 1, now=NOW)
    _model(NEW_MODEL, NEW_RELEASE)
    response = ops.post(_changelist("licensecheckrun"), {"action": "run_license_checks", "index": "0"}, follow=True)
    assert response.status_code == 200 and "Ran 3 licence check(s)." in response.content.decode()
    assert LicenseAgreement.objects.get().team == teams["big"]
    again = ops.post(_changelist("licenseagreement"), {"action": "run_license_checks", "index": "0"}, follow=True)
    assert "checked already" in again.content.decode()
    run = LicenseCheckRun.objects.get(release_date=NEW_RELEASE)
    assert ops.get(reverse("admin:partners_licensecheckrun_change", args=[run.pk])).status_code == 200
    ops.post(reverse("admin:partners_licensecheckrun_change", args=[run.pk]), {"flagged": "99"})
    run.refresh_from_db()
    assert run.flagged == 1
    assert ops.get(reverse("admin:partners_licensecheckrun_add")).status_code == 403


def test_admin_mau_entry_goes_through_the_service(teams, ops):
    licensing.license_check_run(release_date=NEW_RELEASE, now=NOW)
    add = reverse("admin:partners_monthlyactiveusers_add")
    response = ops.post(add, {"team": teams["big"].pk, "month": "2026-10-15", "active_users": str(THRESHOLD + 9)})
    assert response.status_code == 302
    report = MonthlyActiveUsers.objects.get()
    assert (report.month, report.active_users, report.reported_at is not None) == (
        date(2026, 10, 1),
        THRESHOLD + 9,
        True,
    )
    # The check for October already ran: the operator's entry is held to it like an API report.
    assert LicenseAgreement.objects.get().required_from == NEW_RELEASE

    duplicate = ops.post(add, {"team": teams["big"].pk, "month": "2026-10-01", "active_users": "1"})
    assert duplicate.status_code == 200 and MonthlyActiveUsers.objects.get().active_users == THRESHOLD + 9
    future = ops.post(add, {"team": teams["big"].pk, "month": "2099-01-01", "active_users": "1"})
    assert future.status_code == 200 and "not started yet" in future.content.decode()

    assert "700,000,009" in ops.get(_changelist("monthlyactiveusers")).content.decode()
    agreement_page = ops.get(
        reverse("admin:partners_licenseagreement_change", args=[LicenseAgreement.objects.get().pk])
    )
    assert agreement_page.status_code == 200 and "700000009" in agreement_page.content.decode().replace(",", "")
    change = reverse("admin:partners_monthlyactiveusers_change", args=[report.pk])
    assert ops.post(change, {"active_users": "12"}).status_code == 302
    report.refresh_from_db()
    assert (report.month, report.active_users) == (date(2026, 10, 1), 12)


# --- Races on PostgreSQL ----------------------------------------------------------------------------------
# Two beat runs (or a beat run and an operator's "run now") at once, and two first reports at once: the
# unique constraints decide, the losers find the winner's row, and nobody sees an error.

RACERS = 4


def _race(target) -> list[object]:
    barrier = threading.Barrier(RACERS, timeout=30)
    outcomes: list[object] = []

    def run() -> None:
        try:
            barrier.wait()
            outcomes.append(target())
        except Exception as exc:  # reported below, with the others' outcomes
            outcomes.append(exc)
        finally:
            connection.close()  # each thread has its own connection; close it, or the test DB cannot be dropped

    threads = [threading.Thread(target=run, daemon=True) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_racing_check_runs_make_one_run_and_one_agreement(teams):
    licensing.mau_report_record(team=teams["big"], month=date(2026, 10, 1), active_users=THRESHOLD + 1, now=NOW)
    outcomes = _race(lambda: licensing.license_check_run(release_date=NEW_RELEASE, now=NOW).pk)
    run = LicenseCheckRun.objects.get()
    assert outcomes == [run.pk] * RACERS
    assert run.flagged == 1
    assert LicenseAgreement.objects.get().team_id == teams["big"].pk


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_racing_first_reports_of_a_month_leave_one_report(teams):
    outcomes = _race(
        lambda: (
            licensing.mau_report_record(team=teams["big"], month=date(2026, 10, 1), active_users=THRESHOLD, now=NOW).pk
        )
    )
    report = MonthlyActiveUsers.objects.get()
    assert outcomes == [report.pk] * RACERS
