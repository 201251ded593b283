"""The operator's tier workflow in the Django admin: create, edit limits, archive, never delete history."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import UserFactory
from tiers.models import LanguageModel, Tier
from tiers.services import account_setup_new_user, operator_ensure


@pytest.fixture
def operator_client(client, catalog):
    operator_ensure(email="ops@example.com", password="operator-password-1")
    client.login(email="ops@example.com", password="operator-password-1")
    return client


def _tier_form(**overrides) -> dict:
    data = {
        "name": "Team",
        "slug": "team",
        "description": "For small teams",
        "sort_order": 25,
        "is_public": "on",
        "is_paid": "on",
        "price_cents": "50.00",
        "currency": "usd",
        "billing_interval": "month",
        "trial_days": 0,
        "requests_per_minute": 120,
        "tokens_per_minute": 200000,
        "requests_per_day": 10000,
        "monthly_tokens": 50000000,
        "overage_policy": "block",
        "overage_cents_per_million_tokens": "",
        "allowed_models": [LanguageModel.objects.get(model_id="Llama-3.3-70B-Instruct").pk],
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.django_db
def test_tier_list_shows_prices_limits_and_supports_search_and_filters(operator_client):
    url = reverse("admin:tiers_tier_changelist")
    page = operator_client.get(url).content.decode()
    assert "$200.00" in page and "Hard cap" in page and "$0.60/M" in page and "Unlimited" in page
    found = operator_client.get(url, {"q": "developers"}).context["cl"].result_list
    assert [t.slug for t in found] == ["pro"]
    billed = operator_client.get(url, {"overage_policy__exact": "bill"}).context["cl"].result_list
    assert {t.slug for t in billed} == {"pro", "enterprise"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"requests_per_minute": -5}, "greater than or equal to 0"),
        ({"price_cents": 0}, "A paid tier needs a price"),
        ({"overage_policy": "bill", "overage_cents_per_million_tokens": ""}, "needs an overage price"),
        ({"is_paid": None, "price_cents": 100}, "A free tier has no price"),
        ({"slug": "pro"}, "already exists"),
    ],
)
def test_invalid_tier_is_rejected_with_a_form_error(operator_client, overrides, message):
    before = Tier.objects.count()
    response = operator_client.post(reverse("admin:tiers_tier_add"), _tier_form(**overrides))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert Tier.objects.count() == before


@pytest.mark.django_db
def test_operator_creates_edits_and_archives_a_tier(operator_client):
    response = operator_client.post(reverse("admin:tiers_tier_add"), _tier_form())
    assert response.status_code == 302
    tier = Tier.objects.get(slug="team")
    assert tier.price_cents == 5000 and list(tier.allowed_models.values_list("model_id", flat=True)) == [
        "Llama-3.3-70B-Instruct"
    ]

    change_url = reverse("admin:tiers_tier_change", args=[tier.pk])
    response = operator_client.post(change_url, _tier_form(requests_per_minute=300, monthly_tokens=""))
    assert response.status_code == 302
    tier.refresh_from_db()
    assert tier.requests_per_minute == 300 and tier.monthly_tokens is None

    response = operator_client.post(
        reverse("admin:tiers_tier_changelist"), {"action": "archive_tiers", "_selected_action": [tier.pk]}
    )
    assert response.status_code == 302
    tier.refresh_from_db()
    assert tier.is_archived
    assert 'data-tier="team"' not in operator_client.get(reverse("pricing")).content.decode()


@pytest.mark.django_db
def test_tier_with_subscribers_cannot_be_deleted_only_archived(operator_client, catalog):
    account_setup_new_user(user=UserFactory())  # subscribes to free
    free = catalog["free"]
    delete_url = reverse("admin:tiers_tier_delete", args=[free.pk])
    assert operator_client.post(delete_url, {"post": "yes"}).status_code == 403
    response = operator_client.post(
        reverse("admin:tiers_tier_changelist"),
        {"action": "delete_selected", "_selected_action": [free.pk], "post": "yes"},
        follow=True,
    )
    assert Tier.objects.filter(pk=free.pk).exists()
    # Django's bulk delete sees the protected subscriptions and refuses with its own page.
    assert "Cannot delete tier" in response.content.decode()

    unused = catalog["enterprise"]
    assert (
        operator_client.post(reverse("admin:tiers_tier_delete", args=[unused.pk]), {"post": "yes"}).status_code == 302
    )
    assert not Tier.objects.filter(pk=unused.pk).exists()


@pytest.mark.django_db
def test_admin_is_for_operators_only(client, catalog):
    user = UserFactory()
    client.force_login(user)
    response = client.get(reverse("admin:tiers_tier_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_other_admin_pages_render(operator_client):
    account_setup_new_user(user=UserFactory())
    for name in [
        "admin:index",
        "admin:accounts_user_changelist",
        "admin:accounts_team_changelist",
        "admin:tiers_subscription_changelist",
        "admin:tiers_languagemodel_changelist",
        "admin:core_heartbeat_changelist",
        "admin:usage_usagerecord_changelist",
        "admin:accounts_apikey_changelist",
        "admin:accounts_user_add",
    ]:
        assert operator_client.get(reverse(name)).status_code == 200, name


@pytest.mark.django_db
def test_team_page_links_to_the_customers_records_filtered_to_the_team(operator_client):
    from accounts.models import Team

    team = account_setup_new_user(user=UserFactory())
    page = operator_client.get(reverse("admin:accounts_team_change", args=[team.pk])).content.decode()
    for url in [
        "admin:tiers_subscription_changelist",
        "admin:billing_invoice_changelist",
        "admin:accounts_auditentry_changelist",
        "admin:accounts_apikey_changelist",
        "admin:usage_usagerecord_changelist",
    ]:
        link = f"{reverse(url)}?team__id__exact={team.pk}"
        assert link in page, url
        assert operator_client.get(link).status_code == 200, url
    assert Team.objects.count() == 2  # the operator's team and this one
