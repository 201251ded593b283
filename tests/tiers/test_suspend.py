"""Operators suspend and unsuspend a subscription (tiers.services): the model API refuses a suspended
team, billing leaves it alone, the audit log says who and why, and lifting it restores what it was."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from accounts.models import AuditEntry
from accounts.selectors import team_for_user
from accounts.services import api_key_create
from billing import checkout
from tests.factories import UserFactory
from tiers import services
from tiers.models import Subscription
from tiers.selectors import subscription_current

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)


@pytest.fixture
def operator(catalog):
    return UserFactory(is_staff=True)


def _team(tier_slug: str = "free"):
    return team_for_user(user=services.user_create(email="ada@example.com", tier_slug=tier_slug))


def _chat(secret: str):
    body = {"model": "Llama-3.3-8B-Instruct", "messages": [{"role": "user", "content": "Hello"}]}
    return Client().post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )


def test_a_suspended_team_is_refused_by_the_model_api_until_the_suspension_is_lifted(
    operator, django_capture_on_commit_callbacks
):
    team = _team()
    _, secret = api_key_create(team=team, name="test")
    assert _chat(secret).status_code == 200  # its entitlements are cached now

    # The cached entitlements are dropped after the commit: the next request sees the suspension.
    with django_capture_on_commit_callbacks(execute=True):
        services.subscription_suspend(subscription=subscription_current(team=team), actor=operator, reason="Abuse")
    response = _chat(secret)
    assert (response.status_code, response.json()["error"]["code"]) == (429, "subscription_inactive")

    with django_capture_on_commit_callbacks(execute=True):
        services.subscription_unsuspend(subscription=subscription_current(team=team), actor=operator, reason="Done")
    assert _chat(secret).status_code == 200


def test_suspend_and_unsuspend_are_audited_with_the_reason(operator):
    team = _team()
    subscription = subscription_current(team=team)
    suspended = services.subscription_suspend(subscription=subscription, actor=operator, reason="Abuse", now=NOW)
    assert suspended.status == subscription.status == Subscription.Status.SUSPENDED
    entry = AuditEntry.objects.get(team=team, action=AuditEntry.Action.SUSPENDED)
    assert (entry.actor, entry.created_at, entry.data) == (operator, NOW, {"from_status": "active", "reason": "Abuse"})

    services.subscription_unsuspend(subscription=subscription, actor=operator, reason="Cleared")
    assert subscription.status == Subscription.Status.ACTIVE
    entry = AuditEntry.objects.get(team=team, action=AuditEntry.Action.UNSUSPENDED)
    assert entry.data == {"to_status": "active", "reason": "Cleared"}


def test_suspend_refuses_without_a_reason_or_twice_and_unsuspend_only_a_suspended_one(operator):
    subscription = subscription_current(team=_team())
    with pytest.raises(services.ReasonRequired) as caught:
        services.subscription_suspend(subscription=subscription, actor=operator, reason="  ")
    assert caught.value.code == "reason_required"
    with pytest.raises(services.SubscriptionNotSuspendable) as caught:
        services.subscription_unsuspend(subscription=subscription, actor=operator, reason="why not")
    assert caught.value.code == "not_suspended"
    services.subscription_suspend(subscription=subscription, actor=operator, reason="Abuse")
    with pytest.raises(services.SubscriptionNotSuspendable):
        services.subscription_suspend(subscription=subscription, actor=operator, reason="Again")
    assert AuditEntry.objects.filter(action=AuditEntry.Action.SUSPENDED).count() == 1


@pytest.mark.parametrize(
    ("status", "past_due_since", "trial_days_left", "expected"),
    [
        ("active", None, None, "active"),
        ("past_due", NOW - timedelta(days=2), None, "past_due"),  # the unpaid renewal is still owed
        ("trialing", None, 5, "trialing"),
        ("trialing", None, -1, "active"),  # the trial ended while suspended: the next pass bills it
    ],
)
def test_unsuspend_returns_to_what_the_subscription_is(operator, status, past_due_since, trial_days_left, expected):
    team = _team("plus")
    trial_end = NOW + timedelta(days=trial_days_left) if trial_days_left is not None else None
    Subscription.objects.filter(team=team).update(status=status, past_due_since=past_due_since, trial_end=trial_end)
    subscription = subscription_current(team=team)
    services.subscription_suspend(subscription=subscription, actor=operator, reason="Check", now=NOW)
    services.subscription_unsuspend(subscription=subscription, actor=operator, reason="Done", now=NOW)
    assert subscription.status == expected
    assert subscription.past_due_since == past_due_since


def test_a_suspended_customer_cannot_change_tier(operator, catalog):
    team = _team()
    services.subscription_suspend(subscription=subscription_current(team=team), actor=operator, reason="Abuse")
    with pytest.raises(services.InvalidTierChange) as caught:
        checkout.subscription_change(team=team, tier=catalog["plus"], payment_method="pm_card_visa")
    assert caught.value.code == "suspended"
