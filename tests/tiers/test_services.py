from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.services import team_create_personal
from tests.factories import UserFactory
from tiers import catalog, services
from tiers.models import LanguageModel, Subscription, Tier
from tiers.selectors import subscription_current, tier_list_public


@pytest.mark.django_db
def test_seed_creates_catalog_once_and_never_overwrites_operator_edits():
    first = services.tier_catalog_seed()
    assert first.created_tiers == ["free", "assistant", "plus", "pro", "enterprise"]
    assert len(first.created_models) == len(catalog.SEED_MODELS)

    pro = Tier.objects.get(slug="pro")
    pro.price_cents = 25_000
    pro.requests_per_minute = 999
    pro.save()
    pro.allowed_models.remove(LanguageModel.objects.get(model_id="Llama-3.3-8B-Instruct"))
    Tier.objects.filter(slug="plus").delete()  # an operator removed a tier nobody had

    second = services.tier_catalog_seed()
    assert second.created_models == []
    assert second.created_tiers == ["plus"]  # only what is missing
    pro.refresh_from_db()
    assert (pro.price_cents, pro.requests_per_minute) == (25_000, 999)
    assert not pro.allowed_models.filter(model_id="Llama-3.3-8B-Instruct").exists()

    third = services.tier_catalog_seed()
    assert (third.created_models, third.created_tiers) == ([], [])
    assert Tier.objects.count() == 5


@pytest.mark.django_db
def test_seed_catalog_passes_its_own_validation(catalog):
    for tier in catalog.values():
        tier.full_clean()
    free = catalog["free"]
    assert not free.is_paid and free.price_cents == 0 and free.overage_policy == "block"
    assert list(free.allowed_models.values_list("model_id", flat=True)) == ["Llama-3.3-8B-Instruct"]
    assert catalog["pro"].bills_overage
    assert not catalog["enterprise"].is_public


@pytest.mark.django_db
def test_public_list_hides_private_and_archived_tiers(catalog):
    services.tier_archive(tier=catalog["plus"])
    assert [t.slug for t in tier_list_public()] == ["free", "assistant", "pro"]


@pytest.mark.django_db
def test_which_tier_can_be_chosen_is_one_rule_for_a_query_and_for_a_tier_in_hand(catalog):
    services.tier_archive(tier=catalog["plus"])
    for public_only, selectable in [
        (False, ["free", "assistant", "pro", "enterprise"]),
        (True, ["free", "assistant", "pro"]),
    ]:
        assert sorted(t.slug for t in Tier.objects.selectable(public_only=public_only)) == sorted(selectable)
        for tier in Tier.objects.all():
            assert (tier.selectable_refusal(public_only=public_only) == "") == (tier.slug in selectable)
    assert services.tier_selectable_check(tier=catalog["enterprise"]) == catalog["enterprise"]  # operators
    with pytest.raises(services.TierUnavailable, match="not available for sign-up") as caught:
        services.tier_selectable_check(tier=catalog["enterprise"], public_only=True)
    assert caught.value.extra == {"tier": "enterprise"}
    with pytest.raises(services.TierUnavailable, match="archived"):
        services.tier_selectable_check(tier=catalog["plus"])


@pytest.mark.django_db
def test_current_subscriptions_leave_out_canceled_ones(catalog):
    team = team_create_personal(user=UserFactory())
    old = services.subscription_create(team=team, tier=catalog["free"])
    Subscription.objects.filter(pk=old.pk).update(status=Subscription.Status.CANCELED)
    current = services.subscription_create(team=team, tier=catalog["pro"])
    assert list(Subscription.objects.current().filter(team=team)) == [current]
    assert subscription_current(team=team) == current


@pytest.mark.django_db
def test_scheduled_change_clear_drops_a_downgrade_or_cancel_and_names_its_fields(catalog):
    team = team_create_personal(user=UserFactory())
    sub = services.subscription_create(team=team, tier=catalog["pro"])
    sub.pending_tier, sub.cancel_at_period_end, sub.canceled_at = catalog["free"], True, sub.current_period_start
    sub.save()
    sub.save(update_fields=[*sub.scheduled_change_clear(), "updated_at"])
    sub.refresh_from_db()
    assert (sub.pending_tier, sub.cancel_at_period_end, sub.canceled_at) == (None, False, None)


def _tier(**overrides) -> Tier:
    values = dict(slug="t", name="T", is_paid=True, price_cents=1000, currency="usd")
    values.update(overrides)
    return Tier(**values)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(price_cents=0), "price_cents"),  # a paid tier needs a price
        (dict(is_paid=False, price_cents=500), "price_cents"),  # a free tier has none
        (dict(is_paid=False, price_cents=0, trial_days=7), "trial_days"),
        (dict(overage_policy="bill", monthly_tokens=1000), "overage_cents_per_million_tokens"),
        (dict(overage_policy="bill", overage_cents_per_million_tokens=50), "monthly_tokens"),
        (dict(overage_cents_per_million_tokens=50), "overage_cents_per_million_tokens"),
        (dict(requests_per_minute=-1), "requests_per_minute"),
        (dict(monthly_tokens=-5), "monthly_tokens"),
        (dict(currency="dollars"), "currency"),
        (dict(slug="not a slug"), "slug"),
    ],
)
def test_tier_validation_rejects_inconsistent_values(overrides, field):
    with pytest.raises(ValidationError) as excinfo:
        _tier(**overrides).full_clean()
    assert field in excinfo.value.message_dict


@pytest.mark.django_db
def test_tier_database_constraints_back_the_validation():
    with pytest.raises(IntegrityError), transaction.atomic():
        _tier(price_cents=0).save()
    with pytest.raises(IntegrityError), transaction.atomic():
        _tier(overage_policy="bill", monthly_tokens=10).save()
    assert not Tier.objects.exists()


@pytest.mark.django_db
def test_subscription_create_sets_anchor_period_and_trial(catalog):
    team = team_create_personal(user=UserFactory())
    now = datetime(2026, 1, 31, 9, 30, tzinfo=UTC)
    sub = services.subscription_create(team=team, tier=catalog["plus"], now=now)
    assert sub.status == Subscription.Status.TRIALING
    assert sub.trial_end == datetime(2026, 2, 7, 9, 30, tzinfo=UTC)
    assert (sub.billing_anchor, sub.current_period_start) == (now, now)
    assert sub.current_period_end == datetime(2026, 2, 28, 9, 30, tzinfo=UTC)
    assert subscription_current(team=team) == sub


@pytest.mark.django_db
def test_only_one_current_subscription_per_team(catalog):
    team = team_create_personal(user=UserFactory())
    services.subscription_create(team=team, tier=catalog["free"])
    with pytest.raises((IntegrityError, ValidationError)), transaction.atomic():
        services.subscription_create(team=team, tier=catalog["pro"])
    assert Subscription.objects.filter(team=team).count() == 1


@pytest.mark.django_db
def test_archived_tier_cannot_be_chosen_but_subscribers_keep_it(catalog):
    team = team_create_personal(user=UserFactory())
    sub = services.subscription_create(team=team, tier=catalog["plus"])
    services.tier_archive(tier=catalog["plus"])
    sub.refresh_from_db()
    assert sub.tier.slug == "plus" and sub.tier.is_archived
    other = team_create_personal(user=UserFactory())
    with pytest.raises(services.TierUnavailable):
        services.subscription_create(team=other, tier=catalog["plus"])
    with pytest.raises(services.TierUnavailable):
        services.tier_get_for_signup(slug="plus")
    assert services.tier_has_subscribers(tier=catalog["plus"])
    assert not services.tier_has_subscribers(tier=catalog["enterprise"])


@pytest.mark.django_db
def test_signup_tier_missing_gives_a_clear_error():
    with pytest.raises(services.TierUnavailable, match="seed_tiers"):
        services.tier_get_for_signup()
