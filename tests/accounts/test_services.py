from __future__ import annotations

import pytest
from allauth.account.models import EmailAddress
from django.core.exceptions import ValidationError

from accounts.models import Membership, Team, User
from accounts.selectors import team_for_user
from tests.factories import UserFactory
from tiers import services as tier_services
from tiers.models import Subscription
from tiers.services import TierUnavailable


@pytest.mark.django_db
def test_new_user_gets_personal_team_owned_by_them_on_the_free_tier(free_tier):
    user = UserFactory()
    team = tier_services.account_setup_new_user(user=user)
    assert team.is_personal
    assert Membership.objects.get(team=team).user == user
    assert Membership.objects.get(team=team).role == Membership.Role.OWNER
    subscription = Subscription.objects.get(team=team)
    assert (subscription.tier, subscription.status) == (free_tier, Subscription.Status.ACTIVE)
    assert team_for_user(user=user) == team


@pytest.mark.django_db
def test_setup_without_catalog_rolls_back_and_says_why():
    user = UserFactory()
    with pytest.raises(TierUnavailable):
        tier_services.account_setup_new_user(user=user)
    assert not Team.objects.exists()


@pytest.mark.django_db
def test_user_create_for_scripts_verifies_email_and_honours_tier(catalog):
    user = tier_services.user_create(email="Script@Example.COM", password="a-long-passphrase-1", tier_slug="pro")
    assert user.email == "script@example.com"
    assert user.check_password("a-long-passphrase-1")
    assert EmailAddress.objects.get(user=user).verified
    assert team_for_user(user=user).subscriptions.get().tier.slug == "pro"


@pytest.mark.django_db
def test_user_create_refuses_duplicate_email_case_insensitively(catalog):
    tier_services.user_create(email="dup@example.com")
    with pytest.raises(ValidationError):
        tier_services.user_create(email="DUP@example.com")
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_operator_ensure_is_idempotent_and_keeps_a_changed_password(catalog):
    user, created = tier_services.operator_ensure(email="ops@example.com", password="first-password-1")
    assert created and user.is_staff and user.is_superuser
    user.set_password("changed-by-operator-2")
    user.save()
    again, created_again = tier_services.operator_ensure(email="ops@example.com", password="first-password-1")
    assert not created_again and again.pk == user.pk
    again.refresh_from_db()
    assert again.check_password("changed-by-operator-2")
    assert User.objects.count() == 1
