"""The licensee's API: /api/v1/mau (report monthly active users), /api/v1/license and its request."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from django.test import Client
from django.utils import timezone

from accounts import services as account_services
from accounts.selectors import team_for_user
from partners import licensing
from partners.models import LicenseAgreement, MonthlyActiveUsers
from tiers import services as tier_services

pytestmark = pytest.mark.django_db

MAU = "/api/v1/mau"
LICENSE = "/api/v1/license"
REQUEST = "/api/v1/license/request"
RELEASE = date(2026, 11, 1)


def _last_month() -> str:
    return f"{licensing.month_before(timezone.now().date()):%Y-%m}"


@pytest.fixture
def accounts(catalog):
    """Two teams; "alice" is called with an API key, "bob" with a logged-in session."""
    alice = tier_services.user_create(email="alice@example.com")
    bob = tier_services.user_create(email="bob@example.com")
    _, secret = account_services.api_key_create(
        team=team_for_user(user=alice), name="reports", scopes=["model", "read", "manage"]
    )
    session = Client()
    session.force_login(bob)
    return {
        "alice": (team_for_user(user=alice), Client(HTTP_AUTHORIZATION=f"Bearer {secret}")),
        "bob": (team_for_user(user=bob), session),
    }


def test_report_list_and_correct_with_an_api_key(accounts):
    team, client = accounts["alice"]
    month = _last_month()
    created = client.post(MAU, {"month": month, "active_users": 812_000_000}, content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["month"] == month and created.json()["active_users"] == 812_000_000
    corrected = client.post(MAU, {"month": month, "active_users": 650_000_000}, content_type="application/json")
    assert corrected.status_code == 201
    listed = client.get(MAU).json()
    assert listed["count"] == 1 and listed["results"][0]["active_users"] == 650_000_000
    assert MonthlyActiveUsers.objects.get(team=team).active_users == 650_000_000


def test_report_with_a_session(accounts):
    team, client = accounts["bob"]
    response = client.post(MAU, {"month": _last_month(), "active_users": 0}, content_type="application/json")
    assert response.status_code == 201
    assert MonthlyActiveUsers.objects.get().team == team


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"month": "2026-13", "active_users": 5}, "month"),
        ({"month": "2026-10-01", "active_users": 5}, "month"),
        ({"month": "October", "active_users": 5}, "month"),
        ({"month": 202610, "active_users": 5}, "month"),
        ({"month": "2026-10", "active_users": -1}, "active_users"),
        ({"month": "2026-10", "active_users": "many"}, "active_users"),
        ({"month": "2026-10", "active_users": 2**63}, "active_users"),
        ({"active_users": 5}, "month"),
        ({"month": "2026-10"}, "active_users"),
        ({"month": "2999-01", "active_users": 5}, "month"),  # not started yet (the service's rule)
    ],
)
def test_report_validation_errors_are_400_in_the_json_shape(accounts, body, param):
    _, client = accounts["alice"]
    response = client.post(MAU, body, content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid", param)
    assert error["message"]
    assert not MonthlyActiveUsers.objects.exists()


def test_anonymous_callers_are_refused(accounts):
    assert Client().get(MAU).status_code in (401, 403)
    assert Client().post(MAU, {"month": "2026-10", "active_users": 1}, content_type="application/json").status_code in (
        401,
        403,
    )
    assert Client().get(LICENSE).status_code in (401, 403)
    assert Client(HTTP_AUTHORIZATION="Bearer tl-wrong").get(LICENSE).status_code == 401


def test_license_is_404_until_required_then_requested(accounts):
    team, client = accounts["alice"]
    missing = client.get(LICENSE)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    not_required = client.post(REQUEST)
    assert not_required.status_code == 404 and not_required.json()["error"]["code"] == "license_not_required"

    now = datetime(2026, 11, 20, tzinfo=UTC)
    licensing.mau_report_record(team=team, month=date(2026, 10, 1), active_users=700_000_001, now=now)
    licensing.license_check_run(release_date=RELEASE, now=now)
    body = client.get(LICENSE).json()
    assert body["status"] == "required"
    assert (body["required_from"], body["mau_month"], body["reported_mau"]) == ("2026-11-01", "2026-10", 700_000_001)

    requested = client.post(REQUEST)
    assert requested.status_code == 200 and requested.json()["status"] == "requested"
    assert client.post(REQUEST).json()["status"] == "requested"  # asking twice is harmless
    assert LicenseAgreement.objects.get(team=team).status == "requested"


def test_a_decided_licence_cannot_be_requested_and_shows_its_terms(accounts):
    team, client = accounts["alice"]
    now = datetime(2026, 11, 20, tzinfo=UTC)
    licensing.mau_report_record(team=team, month=date(2026, 10, 1), active_users=900_000_000, now=now)
    licensing.license_check_run(release_date=RELEASE, now=now)
    licensing.license_grant(
        agreement=LicenseAgreement.objects.get(team=team),
        actor=None,
        monthly_fee_cents=2_500_000,
        currency="usd",
        terms="Net 30",
        now=now,
    )
    body = client.get(LICENSE).json()
    assert (body["status"], body["monthly_fee_cents"], body["currency"], body["terms"]) == (
        "granted",
        2_500_000,
        "usd",
        "Net 30",
    )
    conflict = client.post(REQUEST)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "license_state_invalid"


def test_one_team_cannot_see_another_teams_report_or_licence(accounts):
    alice_team, alice = accounts["alice"]
    _, bob = accounts["bob"]
    now = datetime(2026, 11, 20, tzinfo=UTC)
    licensing.mau_report_record(team=alice_team, month=date(2026, 10, 1), active_users=900_000_000, now=now)
    licensing.license_check_run(release_date=RELEASE, now=now)
    assert alice.get(MAU).json()["count"] == 1 and alice.get(LICENSE).status_code == 200

    assert bob.get(MAU).json() == {"count": 0, "next": None, "previous": None, "results": []}
    assert bob.get(LICENSE).status_code == 404
    assert bob.post(REQUEST).status_code == 404
    # Bob reporting the same month writes his own report, leaving Alice's alone.
    bob.post(MAU, {"month": "2026-10", "active_users": 3}, content_type="application/json")
    assert MonthlyActiveUsers.objects.get(team=alice_team).active_users == 900_000_000
    assert LicenseAgreement.objects.get().status == "required"
