"""Every write to users, teams and memberships goes through here."""

from __future__ import annotations

from django.db import transaction

from accounts.models import Membership, Team, User
from tiers import services as tier_services


@transaction.atomic
def team_create_personal(*, user: User) -> Team:
    """Create ``user``'s personal team with ``user`` as its owner."""
    team = Team(name=f"{user.email}'s team", is_personal=True)
    team.full_clean()
    team.save()
    Membership.objects.create(user=user, team=team, role=Membership.Role.OWNER)
    return team


@transaction.atomic
def account_setup_new_user(*, user: User, tier_slug: str | None = None) -> Team:
    """Give a newly signed-up ``user`` a personal team subscribed to ``tier_slug`` (default: free).

    Called by the allauth adapter at sign-up and by commands that create users. Fails, and so rolls
    back the sign-up, if the tier is missing or archived.
    """
    tier = tier_services.tier_get_for_signup(slug=tier_slug)
    team = team_create_personal(user=user)
    tier_services.subscription_create(team=team, tier=tier)
    return team


@transaction.atomic
def user_create(*, email: str, password: str | None = None, tier_slug: str | None = None) -> User:
    """Create a user with a verified primary email, a personal team and a subscription.

    For operators and scripts (commands, the demo account); people sign up through allauth's pages.
    """
    from allauth.account.models import EmailAddress

    user = User(email=User.objects.normalize_email(email).lower())
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean()
    user.save()
    EmailAddress.objects.create(user=user, email=user.email, primary=True, verified=True)
    account_setup_new_user(user=user, tier_slug=tier_slug)
    return user


@transaction.atomic
def operator_ensure(*, email: str, password: str) -> tuple[User, bool]:
    """Make sure an operator (staff superuser) with ``email`` exists; returns (user, created).

    An existing account is promoted but its password is left alone, so re-running never undoes a
    password the operator changed.
    """
    user = User.objects.filter(email__iexact=email).first()
    created = user is None
    if created:
        user = user_create(email=email, password=password)
    if not (user.is_staff and user.is_superuser):
        user.is_staff = True
        user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    return user, created
