"""Every write to users, teams and memberships goes through here."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from accounts.models import ApiKey, Membership, Team, User
from config.errors import ApplicationError
from tiers import services as tier_services

if TYPE_CHECKING:
    from usage.models import Partner


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


# --- API keys -----------------------------------------------------------------------------------------
# A key reads "tl-" + 45 URL-safe characters (about 270 random bits). Its first API_KEY_PREFIX_LENGTH
# characters are stored in the clear as the lookup prefix (shown in lists to tell keys apart); the
# whole key is stored only as its SHA-256 hash.
API_KEY_MARKER = "tl-"
API_KEY_PREFIX_LENGTH = 15


class ApiKeyError(ApplicationError):
    code = "invalid_api_key_request"


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@transaction.atomic
def api_key_create(
    *,
    team: Team,
    name: str,
    created_by: User | None = None,
    expires_at: datetime | None = None,
    partner: Partner | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``team``; returns (key, secret). The secret is not stored and cannot be shown again.

    ``partner``: the hosting partner whose channel the key is issued for; the team's traffic through
    it is attributed to that partner (usage records, partner statements' direct lines)."""
    name = (name or "").strip()
    if not name:
        raise ApiKeyError("Give the key a name, e.g. the app that will use it.", extra={"field": "name"})
    if expires_at is not None and expires_at <= timezone.now():
        raise ApiKeyError("The expiry must be in the future.", extra={"field": "expires_at"})
    for _ in range(3):
        raw = API_KEY_MARKER + secrets.token_urlsafe(34)
        key = ApiKey(
            team=team,
            name=name,
            prefix=raw[:API_KEY_PREFIX_LENGTH],
            secret_hash=api_key_hash(raw),
            created_by=created_by,
            expires_at=expires_at,
            partner=partner,
        )
        key.full_clean(exclude=["prefix"])
        try:
            with transaction.atomic():
                key.save()
        except IntegrityError:  # a prefix collision: 2^-72 per pair, but cheap to handle
            continue
        return key, raw
    raise ApiKeyError("Could not create a unique key; try again.")


@transaction.atomic
def api_key_revoke(*, key: ApiKey, now: datetime | None = None) -> ApiKey:
    """Revoke ``key`` (idempotent). The model API refuses it within the auth cache's TTL (seconds)."""
    if key.revoked_at is None:
        key.revoked_at = now or timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def api_key_mark_used(*, used_at: dict[int, datetime]) -> None:
    """Move each key's ``last_used_at`` forward to the given time (never back)."""
    for key_id, when in used_at.items():
        ApiKey.objects.filter(pk=key_id).filter(
            models.Q(last_used_at__isnull=True) | models.Q(last_used_at__lt=when)
        ).update(last_used_at=when)
