"""users_create: many sign-ups at once (the simulator's), with what user_create gives one."""

from __future__ import annotations

import pytest
from allauth.account.models import EmailAddress

from accounts.models import Membership, Team, User
from accounts.selectors import team_for_user
from tiers.models import Subscription
from tiers.services import EmailTaken, TierUnavailable, user_create, users_create

pytestmark = pytest.mark.django_db


def _account(user: User) -> tuple:
    team = team_for_user(user=user)
    sub = Subscription.objects.get(team=team)
    address = EmailAddress.objects.get(user=user)
    owners = list(Membership.objects.filter(team=team).values_list("user__email", "role"))
    return (
        user.email,
        user.has_usable_password(),
        (address.email, address.primary, address.verified),
        team.name,
        team.is_personal,
        bool(team.slug),
        owners,
        (sub.tier.slug, sub.status, sub.current_period_end - sub.current_period_start, sub.trial_end is not None),
    )


def test_each_user_gets_what_user_create_gives_one(catalog):
    one = user_create(email="Single@Example.com", tier_slug="plus")
    created = users_create(emails=["Ada@Example.COM", "bob@example.com", "cy@example.com"], tier_slug="plus")

    assert [user.email for user, _ in created] == ["ada@example.com", "bob@example.com", "cy@example.com"]
    assert [team for _, team in created] == [team_for_user(user=user) for user, _ in created]
    expected = _account(one)
    for user, _ in created:
        account = _account(user)
        assert account[0] == user.email
        assert account[2][0] == user.email
        assert account[6] == [(user.email, Membership.Role.OWNER)]
        assert account[1:2] + account[2][1:] + account[4:6] + account[7:] == (
            expected[1:2] + expected[2][1:] + expected[4:6] + expected[7:]
        )
        assert account[3] == f"{user.email}'s team"
    assert expected[7][1] == Subscription.Status.TRIALING  # plus has trial days: the same trial for all
    assert len({team.slug for _, team in created}) == 3
    assert users_create(emails=[]) == []


def test_default_is_the_free_tier(catalog):
    ((_, team),) = users_create(emails=["free@example.com"])
    assert Subscription.objects.get(team=team).tier.slug == "free"


@pytest.mark.parametrize(
    "emails",
    [["new@example.com", "TAKEN@example.com"], ["new@example.com", "twice@example.com", "Twice@Example.com"]],
    ids=["already taken", "twice in the batch"],
)
def test_an_email_taken_refuses_the_batch_and_writes_nothing(catalog, emails):
    user_create(email="taken@example.com")
    before = (User.objects.count(), Team.objects.count(), Subscription.objects.count(), EmailAddress.objects.count())

    with pytest.raises(EmailTaken) as refused:
        users_create(emails=emails)

    assert refused.value.code == "email_taken"
    assert refused.value.extra["emails"] in (["taken@example.com"], ["twice@example.com"])
    after = (User.objects.count(), Team.objects.count(), Subscription.objects.count(), EmailAddress.objects.count())
    assert after == before


def test_an_unknown_tier_or_a_bad_email_writes_nothing(catalog):
    from django.core.exceptions import ValidationError

    with pytest.raises(TierUnavailable):
        users_create(emails=["a@example.com"], tier_slug="nope")
    with pytest.raises(ValidationError):
        users_create(emails=["a@example.com", "not an email"])
    assert not User.objects.exists()
