"""The subscriber's own monthly spend cap: the service, the API, and what the model API does with it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import Client
from rest_framework.test import APIClient

from accounts import services
from accounts.models import AuditEntry
from accounts.selectors import team_for_user
from tiers import services as tier_services
from tiers.models import Subscription, Tier
from tiers.selectors import entitlements_cache_clear, entitlements_for_team
from tiers.services import subscription_spend_cap_set
from usage.alerts import usage_alerts_evaluate
from usage.models import UsageRecord

SMALL = "Llama-3.3-8B-Instruct"
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)


@pytest.fixture
def account(catalog):
    """A team on a tier that bills overage (100 included tokens, $10, 0.1 cent per overage token), with
    an API key."""
    with time_machine.travel(T0, tick=False):
        user = tier_services.user_create(email="capped@example.com")
    team = team_for_user(user=user)
    tier = Tier.objects.create(
        slug="metered", name="Metered", is_paid=True, price_cents=1_000, monthly_tokens=100,
        overage_policy="bill", overage_cents_per_million_tokens=100_000,
    )  # fmt: skip
    tier.allowed_models.set(catalog["free"].allowed_models.all())
    Subscription.objects.filter(team=team).update(tier=tier)
    entitlements_cache_clear()
    _, secret = services.api_key_create(team=team, name="app")
    return user, team, secret


def chat(secret, max_tokens=40):
    body = {"model": SMALL, "messages": [{"role": "user", "content": "Tell me about llamas."}]}
    body["max_completion_tokens"] = max_tokens
    return Client().post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )


@pytest.mark.django_db
def test_service_sets_and_removes_the_cap_and_audits_it(account, django_capture_on_commit_callbacks):
    _, team, _ = account
    assert entitlements_for_team(team_id=team.pk).spend_capped_tokens is None  # cached now
    with django_capture_on_commit_callbacks(execute=True):
        subscription = subscription_spend_cap_set(team=team, cap_cents=2_500, hard=True)
    assert (subscription.spend_cap_cents, subscription.spend_cap_hard) == (2_500, True)
    entitlements = entitlements_for_team(team_id=team.pk)
    # 100 included + (2,500 - 1,000 fee) cents at 0.1 cent per token.
    assert entitlements.spend_capped_tokens == 100 + 15_000
    with django_capture_on_commit_callbacks(execute=True):
        subscription = subscription_spend_cap_set(team=team, cap_cents=None, hard=True)
    assert Subscription.objects.get(pk=subscription.pk).spend_cap_cents is None
    assert entitlements_for_team(team_id=team.pk).spend_capped_tokens is None
    assert list(AuditEntry.objects.filter(team=team).values_list("action", flat=True)) == [
        "spend_cap_removed",
        "spend_cap_set",
    ]


@pytest.mark.django_db
def test_service_refuses_a_tier_without_overage_and_a_cap_below_the_fee(account, catalog):
    from core.errors import ApplicationError

    _, team, _ = account
    with pytest.raises(ApplicationError) as below:
        subscription_spend_cap_set(team=team, cap_cents=999, hard=True)
    assert below.value.code == "spend_cap_below_fee"
    # In the currency, as the form takes it: not "(1000 cents)" (issue 16, finding 9).
    assert below.value.message == "The spend cap must be at least the tier fee ($10.00)."
    subscription_spend_cap_set(team=team, cap_cents=1_000, hard=True)  # exactly the fee: allowed
    Subscription.objects.filter(team=team).update(tier=catalog["free"])
    with pytest.raises(ApplicationError) as unavailable:
        subscription_spend_cap_set(team=team, cap_cents=5_000, hard=False)
    assert unavailable.value.code == "spend_cap_not_available"
    assert Subscription.objects.get(team=team).spend_cap_cents == 1_000  # unchanged


@pytest.mark.django_db
def test_api_reads_sets_and_refuses_with_the_json_error_shape(account, catalog):
    user, team, _ = account
    client = APIClient()
    client.force_login(user)
    url = "/api/v1/subscription/spend-cap"
    assert client.get(url).json() == {
        "amount_cents": None, "hard": True, "currency": "usd", "available": True, "fee_cents": 1_000,
    }  # fmt: skip
    response = client.put(url, {"amount_cents": 3_000, "hard": False}, format="json")
    assert response.status_code == 200 and response.json()["amount_cents"] == 3_000
    assert response.json()["hard"] is False

    for body, status, code, param in [
        ({"amount_cents": -1}, 400, "invalid", "amount_cents"),
        ({"amount_cents": "lots"}, 400, "invalid", "amount_cents"),
        ({"hard": True}, 400, "invalid", "amount_cents"),
        ({"amount_cents": 500, "hard": True}, 400, "spend_cap_below_fee", "amount_cents"),
    ]:
        refused = client.put(url, body, format="json")
        assert refused.status_code == status, body
        assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (code, param), body
    Subscription.objects.filter(team=team).update(tier=catalog["free"])
    refused = client.put(url, {"amount_cents": 3_000, "hard": True}, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "spend_cap_not_available"
    assert Subscription.objects.values_list("spend_cap_cents", "spend_cap_hard").get(team=team) == (3_000, False)
    assert APIClient().get(url).status_code in (401, 403)


@pytest.mark.django_db
def test_hard_cap_refuses_the_model_api_with_insufficient_quota(account, django_capture_on_commit_callbacks):
    _, team, secret = account
    # The fee plus 5 cents of overage: 100 included + 50 overage tokens in the period.
    subscription_spend_cap_set(team=team, cap_cents=1_005, hard=True)
    now = T0 + timedelta(days=2)
    with time_machine.travel(now, tick=False):
        statuses = [chat(secret) for _ in range(6)]
    codes = [r.status_code for r in statuses]
    assert codes[0] == 200 and 429 in codes, codes
    refused = statuses[codes.index(429)]
    assert refused.json()["error"]["code"] == "insufficient_quota"
    used = sum(UsageRecord.objects.filter(team=team).values_list("total_tokens", flat=True))
    assert used <= 150  # the allowance the cap leaves: the bill never passes it

    # Removing the cap lets requests through again (the tier bills overage).
    with django_capture_on_commit_callbacks(execute=True):  # the cached entitlements go on commit
        subscription_spend_cap_set(team=team, cap_cents=None, hard=True)
    with time_machine.travel(now + timedelta(minutes=1), tick=False):
        assert chat(secret).status_code == 200


@pytest.mark.django_db
def test_notify_only_cap_emails_once_but_the_model_api_still_admits(
    account, mailoutbox, django_capture_on_commit_callbacks
):
    _, team, secret = account
    subscription_spend_cap_set(team=team, cap_cents=1_001, hard=False)  # 10 overage tokens
    now = T0 + timedelta(days=2)
    with time_machine.travel(now, tick=False):
        responses = [chat(secret) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert sum(UsageRecord.objects.filter(team=team).values_list("total_tokens", flat=True)) > 110
    with django_capture_on_commit_callbacks(execute=True):
        usage_alerts_evaluate(now=now + timedelta(minutes=1))
        usage_alerts_evaluate(now=now + timedelta(minutes=2))
    spend = [m for m in mailoutbox if m.subject == "[TierLab] Your spend cap was reached"]
    assert len(spend) == 1 and "notify only" in spend[0].body
    with time_machine.travel(now + timedelta(minutes=3), tick=False):
        assert chat(secret).status_code == 200  # still admitted after the alert


@pytest.mark.django_db
def test_hard_cap_alert_fires_even_when_the_refusal_stops_the_bill_short_of_the_cap(
    account, mailoutbox, django_capture_on_commit_callbacks
):
    from usage.refusals import refusal_counts_flush

    _, team, secret = account
    subscription_spend_cap_set(team=team, cap_cents=1_005, hard=True)
    now = T0 + timedelta(days=2)
    with time_machine.travel(now, tick=False):
        codes = [chat(secret, max_tokens=200).status_code for _ in range(3)]
    refusal_counts_flush()
    assert 429 in codes
    with django_capture_on_commit_callbacks(execute=True):
        usage_alerts_evaluate(now=now + timedelta(minutes=1))
    assert [m.subject for m in mailoutbox if "spend cap" in m.subject] == ["[TierLab] Your spend cap was reached"]
