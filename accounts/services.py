"""Every write to users, teams and memberships goes through here."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from typing import Any, TypeVar

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from accounts import extensions
from accounts.models import ApiKey, AuditEntry, Membership, Team, User, team_slug_new
from accounts.roles import TeamAction, role_allows, team_role, team_role_check
from core.errors import ApplicationError
from core.sql import quoted_table


@transaction.atomic
def team_create(
    *, name: str, owner: User, is_personal: bool = False, set_up: bool = True, now: datetime | None = None
) -> Team:
    """Create a team with ``owner`` as its owner (audited, unless personal). ``set_up``: the apps above give it what
    every team starts with (tiers: the free tier; accounts.extensions); False when the caller does that
    itself (tiers.services.account_setup_new_user, on a chosen tier)."""
    now = now or timezone.now()
    team = Team(name=(name or "").strip(), is_personal=is_personal)
    team.full_clean(exclude=["slug"])
    team.save()
    Membership.objects.create(user=owner, team=team, role=Membership.Role.OWNER)
    if not is_personal:  # a personal team comes with the account; a team made later is a decision
        audit_entry_create(
            team_id=team.pk,
            actor=owner,
            action=AuditEntry.Action.TEAM_CREATED,
            description=f"{team.name} created by {owner.email}",
            data={"slug": team.slug},
            now=now,
        )
    if set_up:
        extensions.team_set_up(team=team)
    return team


def personal_team_name(user: User) -> str:
    return f"{user.email}'s team"


def team_create_personal(*, user: User, set_up: bool = False) -> Team:
    """Create ``user``'s personal team with ``user`` as its owner. Sign-up sets it up itself, on the
    tier chosen (tiers.services.account_setup_new_user); ``set_up`` for an operator's (createsuperuser)."""
    return team_create(name=personal_team_name(user), owner=user, is_personal=True, set_up=set_up)


@transaction.atomic
def users_and_teams_create(*, users: list[User]) -> list[Team]:
    """Save many new ``users`` (built, validated, not saved: tiers.services.users_create) and each one's
    personal team with them as owner, in three INSERTs; returns the teams in the order of ``users``.

    The bulk sibling of ``user.save()`` + ``team_create_personal`` (set_up=False: the caller subscribes
    the teams itself): the same names, slugs and owner memberships. The one rule that would take a query
    per row, a new slug's uniqueness (a random suffix: team_slug_new), is left to the database's unique
    constraint: a collision fails the whole batch, which the caller's transaction rolls back."""
    users = User.objects.bulk_create(users)
    teams = []
    for user in users:
        team = Team(name=personal_team_name(user), is_personal=True)
        team.slug = team_slug_new(team.name)
        team.full_clean(validate_unique=False, validate_constraints=False)
        teams.append(team)
    teams = Team.objects.bulk_create(teams)
    Membership.objects.bulk_create(
        [Membership(user=user, team=team, role=Membership.Role.OWNER) for user, team in zip(users, teams, strict=True)]
    )
    return teams


# --- API keys -----------------------------------------------------------------------------------------
# A key reads "tl-" + 45 URL-safe characters (about 270 random bits). Its first API_KEY_PREFIX_LENGTH
# characters are stored in the clear as the lookup prefix (shown in lists to tell keys apart); the
# whole key is stored only as its SHA-256 hash.
API_KEY_MARKER = "tl-"
API_KEY_PREFIX_LENGTH = 15


class ApiKeyError(ApplicationError):
    code = "invalid_api_key_request"


class InsufficientScope(ApplicationError):
    """403: the caller may not do this: its API key lacks the scope, or it asks for a scope it may not
    grant. The one refusal of the key scopes (DESIGN.md), on the account API and the keys page alike."""

    status = 403
    code = "insufficient_scope"


class ApiAccessNotIncluded(ApplicationError):
    """403: the team's tier does not include API access (a playground-only consumer tier): no key may
    be created for it. The same code the model API answers for a key of such a team."""

    status = 403
    code = "api_access_not_included"


def api_key_can_grant_manage(*, user: User, team: Team) -> bool:
    """Whether ``user`` may create keys with the ``manage`` scope for ``team``: the roles that run every
    key (owners and admins, accounts.roles)."""
    return role_allows(team_role(team=team, user=user), TeamAction.KEYS_ALL)


def _api_key_scopes(
    *, team: Team, scopes: Iterable[str] | None, created_by: User | None, creator_scopes: Collection[str] | None
) -> list[str]:
    """The scopes a new key gets: ``scopes`` if given, else model + read, once the creator may grant them.

    A key (``creator_scopes`` set) grants at most its own scopes; a session user grants ``manage`` only
    as an owner or admin of ``team``; the system (no creator: management commands, partner channels)
    grants anything. A key's own request acts for its creator (``created_by``), whose role counts too."""
    wanted = list(dict.fromkeys(scopes)) if scopes is not None else [ApiKey.Scope.MODEL, ApiKey.Scope.READ]
    unknown = [scope for scope in wanted if scope not in ApiKey.Scope.values]
    if unknown or not wanted:
        raise ApiKeyError(
            f"Scopes are model, read and manage; got {', '.join(map(str, unknown)) or 'none'}.",
            extra={"field": "scopes"},
        )
    if creator_scopes is not None:
        beyond = [scope for scope in wanted if scope not in creator_scopes]
        if beyond:
            raise InsufficientScope(
                f"A key cannot create a key with more scopes than its own (it lacks: {', '.join(beyond)}).",
                extra={"field": "scopes"},
            )
    if (
        created_by is not None
        and ApiKey.Scope.MANAGE in wanted
        and not api_key_can_grant_manage(user=created_by, team=team)
    ):
        raise InsufficientScope(
            "Only the team's owners and admins can create keys with the manage scope.", extra={"field": "scopes"}
        )
    return wanted


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


KeyRow = TypeVar("KeyRow", bound=models.Model)


def secret_key_save(
    *, marker: str, prefix_length: int, build: Callable[[str, str], KeyRow]
) -> tuple[KeyRow, str] | None:
    """Draw a new secret (``marker`` + 45 URL-safe characters, about 270 random bits) and save the key
    row ``build(prefix, secret_hash)`` makes for it: the prefix in the clear for the lookup, the whole
    secret only as its SHA-256 hash. Returns (row, secret), or None if three draws in a row hit an
    existing prefix (2^-72 per pair: cheap to handle, never seen). The scheme of team API keys and of
    partner keys alike; each has its own marker, so neither is mistaken for the other."""
    for _ in range(3):
        raw = marker + secrets.token_urlsafe(34)
        key = build(raw[:prefix_length], api_key_hash(raw))
        key.full_clean(exclude=["prefix"])
        try:
            with transaction.atomic():
                key.save()
        except IntegrityError:  # a prefix collision
            continue
        return key, raw
    return None


@transaction.atomic
def api_key_create(
    *,
    team: Team,
    name: str,
    created_by: User | None = None,
    expires_at: datetime | None = None,
    scopes: Iterable[str] | None = None,
    creator_scopes: Collection[str] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``team``; returns (key, secret). The secret is not stored and cannot be shown again.

    ``scopes`` default to model + read. ``creator_scopes`` are the scopes of the API key making this
    request (None for a session or the system): a key never creates a key with more scopes than its
    own, and only owners and admins grant ``manage`` (403 ``insufficient_scope``). ``created_by`` is
    the person acting (a session's user, or the user behind the key making the request); every role
    may create keys, a non-member none (403 ``role_forbidden``). A team whose tier does not include API
    access gets none (403 ``api_access_not_included``; accounts.extensions.api_access_refusal).

    A key for a hosting partner's channel is made by ``partners.services.partner_channel_key_create``,
    which calls this and records the channel."""
    name = (name or "").strip()
    if not name:
        raise ApiKeyError("Give the key a name, e.g. the app that will use it.", extra={"field": "name"})
    if expires_at is not None and expires_at <= timezone.now():
        raise ApiKeyError("The expiry must be in the future.", extra={"field": "expires_at"})
    team_role_check(team=team, actor=created_by, action=TeamAction.KEYS_OWN)
    refusal = extensions.api_access_refusal(team=team)
    if refusal:
        raise ApiAccessNotIncluded(refusal)
    granted = _api_key_scopes(team=team, scopes=scopes, created_by=created_by, creator_scopes=creator_scopes)
    created = secret_key_save(
        marker=API_KEY_MARKER,
        prefix_length=API_KEY_PREFIX_LENGTH,
        build=lambda prefix, secret_hash: ApiKey(
            team=team,
            name=name,
            prefix=prefix,
            secret_hash=secret_hash,
            created_by=created_by,
            expires_at=expires_at,
            scopes=granted,
        ),
    )
    if created is None:
        raise ApiKeyError("Could not create a unique key; try again.")
    return created


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: User | None = None, now: datetime | None = None) -> ApiKey:
    """Revoke ``key`` (idempotent). The model API refuses it within the auth cache's TTL (seconds).
    Everyone revokes the keys they created; owners and admins any key of the team."""
    own = actor is not None and key.created_by_id == actor.pk
    team_role_check(team=key.team, actor=actor, action=TeamAction.KEYS_OWN if own else TeamAction.KEYS_ALL)
    if key.revoked_at is None:
        key.revoked_at = now or timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def api_key_mark_used_sql() -> str:
    """``api_key_mark_used`` for one key as a statement for a caller to run inside one of its own (the
    database quota backend's one-statement consume on PostgreSQL runs it as a CTE, so marking costs no
    statement of its own): named parameters ``%(api_key)s`` and ``%(used_at)s``."""
    return (
        f"UPDATE {quoted_table(ApiKey)} SET last_used_at = %(used_at)s"  # noqa: S608 - identifiers from _meta
        " WHERE id = %(api_key)s AND (last_used_at IS NULL OR last_used_at < %(used_at)s)"
    )


def api_key_mark_used(*, used_at: dict[int, datetime]) -> None:
    """Move each key's ``last_used_at`` forward to the given time (never back)."""
    for key_id, when in used_at.items():
        ApiKey.objects.filter(pk=key_id).filter(
            models.Q(last_used_at__isnull=True) | models.Q(last_used_at__lt=when)
        ).update(last_used_at=when)


# --- The audit trail ------------------------------------------------------------------------------------


def audit_entry_create(
    *,
    team_id: int | None,
    action: AuditEntry.Action,
    description: str,
    now: datetime,
    actor: User | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    """Write one entry of the team's audit trail (the caller's transaction makes it atomic with the
    change it records). The description is cut to the column's 500 characters."""
    return AuditEntry.objects.create(
        team_id=team_id,
        actor=actor,
        action=AuditEntry.Action(action),
        description=description[:500],
        data=data or {},
        created_at=now,
    )
