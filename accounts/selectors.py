from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from django.db import models
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from accounts.models import ApiKey, Invitation, Membership, Team, User
from accounts.roles import TeamAction, role_allows, team_role, team_role_check
from accounts.services import API_KEY_MARKER, API_KEY_PREFIX_LENGTH, api_key_hash
from core.compiled_query import CompiledFirst
from core.local_cache import InvalidatedCache, TTLCache

# The session key of the team a signed-in person acts for (switched in the navigation bar).
CURRENT_TEAM_SESSION_KEY = "tierlab_team_id"


def team_for_user(*, user: User) -> Team | None:
    """The team a user acts for by default: their personal team, else the team they joined first."""
    membership = (
        Membership.objects.select_related("team").filter(user=user).order_by("-team__is_personal", "created_at").first()
    )
    return membership.team if membership else None


def team_memberships(*, user: User) -> QuerySet[Membership]:
    """``user``'s memberships with their teams, personal team first, then by name (the team switcher)."""
    return Membership.objects.select_related("team").filter(user=user).order_by("-team__is_personal", "team__name")


def team_for_request(request) -> Team | None:
    """The team a request acts for: an API key's own team; for a signed-in person, the current team kept
    in the session (``team_switch``) while they are still a member of it, else their default team
    (``team_for_user``). Memoised on the request."""
    if not hasattr(request, "_tierlab_team"):
        principal_team = getattr(request.user, "team", None)
        if principal_team is not None:
            request._tierlab_team = principal_team
        elif request.user.is_authenticated:
            chosen = request.session.get(CURRENT_TEAM_SESSION_KEY)
            team = Team.objects.filter(pk=chosen, memberships__user=request.user).first() if chosen else None
            request._tierlab_team = team or team_for_user(user=request.user)
        else:
            request._tierlab_team = None
    return request._tierlab_team


def actor_for_request(request) -> User | None:
    """Who acts in a request, for the role checks (accounts.roles): a session's user, or the user who
    created the API key (None for a key without a creator: the system). Memoised on the request."""
    if not hasattr(request, "_tierlab_actor"):
        user = request.user
        if isinstance(user, User):
            request._tierlab_actor = user
        else:
            creator_id = getattr(user, "created_by_id", None)
            request._tierlab_actor = User.objects.filter(pk=creator_id).first() if creator_id else None
    return request._tierlab_actor


def api_key_list(*, team: Team) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(team=team).select_related("created_by").order_by("revoked_at", "-created_at")


def api_key_list_visible(*, team: Team, actor: User | None) -> QuerySet[ApiKey]:
    """The team's keys ``actor`` sees: every key for owners, admins and the system; the keys they
    created for the other roles."""
    keys = api_key_list(team=team)
    if actor is None or role_allows(team_role(team=team, user=actor), TeamAction.KEYS_ALL):
        return keys
    return keys.filter(created_by=actor)


def api_key_get_visible(*, team: Team, actor: User | None, key_id: int) -> ApiKey:
    """One of the team's keys for ``actor`` to see: Http404 if the team has no such key (another team's
    is simply not found), RoleForbidden if it is someone else's and ``actor`` sees only their own."""
    key = get_object_or_404(api_key_list(team=team), pk=key_id)
    if actor is not None and key.created_by_id != actor.pk:
        team_role_check(team=team, actor=actor, action=TeamAction.KEYS_ALL)
    return key


def team_member_list(*, team: Team) -> QuerySet[Membership]:
    """The team's members, owners first, then by email."""
    order = models.Case(
        *(models.When(role=role, then=models.Value(n)) for n, role in enumerate(Membership.Role.values)),
        output_field=models.IntegerField(),
    )
    return Membership.objects.select_related("user").filter(team=team).order_by(order, "user__email")


def invitation_list_for(*, team: Team, actor: User | None) -> QuerySet[Invitation]:
    """The team's invitations for ``actor`` to see: owners and admins (and the system) only."""
    team_role_check(team=team, actor=actor, action=TeamAction.MEMBERS_MANAGE)
    return invitation_list(team=team)


def invitation_list(*, team: Team, open_only: bool = False) -> QuerySet[Invitation]:
    """The team's invitations, newest first; ``open_only``: neither accepted nor revoked (pending or expired)."""
    invitations = Invitation.objects.filter(team=team).select_related("invited_by", "accepted_by")
    if open_only:
        invitations = invitations.filter(accepted_at__isnull=True, revoked_at__isnull=True)
    return invitations


@dataclass(frozen=True)
class AuthenticatedKey:
    key_id: int
    team_id: int
    name: str
    # What the key may do (ApiKey.Scope values), loaded with the key and cached with it: checking a
    # scope costs no query.
    scopes: frozenset[str]
    # Who made it: its requests on the account API act with that user's role (accounts.roles).
    created_by_id: int | None = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class _KeyRow:
    key_id: int
    team_id: int
    name: str
    secret_hash: str
    expires_at: datetime | None
    revoked_at: datetime | None
    scopes: frozenset[str]
    created_by_id: int | None


class _HashedKey(Protocol):
    @property
    def secret_hash(self) -> str: ...


HashedKey = TypeVar("HashedKey", bound=_HashedKey)


def secret_key_match(
    raw_key: str,
    *,
    marker: str,
    prefix_length: int,
    cache: TTLCache[str, HashedKey | None],
    load: Callable[[str], HashedKey | None],
) -> HashedKey | None:
    """The key row ``raw_key`` names if its SHA-256 hash matches, else None: one indexed lookup by
    prefix (``load(prefix)``, cached in ``cache``, misses too), then a constant-time comparison of the
    hashes. Whether the key is still valid (revoked, expired) is the caller's to say. The scheme of
    team API keys and of partner keys alike (accounts.services.secret_key_save)."""
    if not raw_key.startswith(marker) or len(raw_key) < prefix_length + 16:
        return None
    prefix = raw_key[:prefix_length]
    row = cache.get_or_load(prefix, lambda: load(prefix))
    if row is None or not hmac.compare_digest(api_key_hash(raw_key), row.secret_hash):
        return None
    return row


# Kept for minutes, dropped when the feed says the key's team changed (core/invalidation.py; the
# triggers watch the key's row); an unknown prefix only TIERLAB_AUTH_CACHE_SECONDS.
_key_cache: InvalidatedCache[str, _KeyRow | None] = InvalidatedCache(
    team_of=lambda prefix, row: row.team_id if row is not None else None, short_misses=True
)


# What a key lookup reads, in this order (usage.callers reads the same columns with more of its own).
API_KEY_ROW_FIELDS = ("id", "team_id", "name", "secret_hash", "expires_at", "revoked_at", "scopes", "created_by_id")

# Compiled once per process: a miss costs the statement, not the ORM (core/compiled_query.py).
_key_row_query = CompiledFirst(
    lambda prefix: ApiKey.objects.filter(prefix=prefix).values_list(*API_KEY_ROW_FIELDS), arity=1
)


def _key_row_of(row: tuple | None) -> _KeyRow | None:
    return _KeyRow(*row[:6], scopes=frozenset(row[6] or ()), created_by_id=row[7]) if row else None


def _load_key_row(prefix: str) -> _KeyRow | None:
    return _key_row_of(_key_row_query.first(prefix))


def api_key_authenticate(
    *, raw_key: str, now: datetime | None = None, load_row: Callable[[str], tuple | None] | None = None
) -> AuthenticatedKey | None:
    """The key ``raw_key`` names, if it exists, matches, is not revoked and has not expired.

    One indexed lookup by prefix (cached in-process, dropped through the invalidation feed when the key
    changes: core/invalidation.py; an unknown prefix for TIERLAB_AUTH_CACHE_SECONDS), then a
    constant-time comparison of SHA-256 hashes. A revocation is seen within TIERLAB_AUTH_CACHE_SECONDS.
    ``load_row(prefix)``: the lookup of a caller that reads more in the same statement; it returns the
    values of API_KEY_ROW_FIELDS (first, in order) or None, and is cached like the plain lookup.
    """
    load = _load_key_row if load_row is None else (lambda prefix: _key_row_of(load_row(prefix)))
    row = secret_key_match(
        raw_key, marker=API_KEY_MARKER, prefix_length=API_KEY_PREFIX_LENGTH, cache=_key_cache, load=load
    )
    if row is None:
        return None
    now = now or timezone.now()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return AuthenticatedKey(
        key_id=row.key_id, team_id=row.team_id, name=row.name, scopes=row.scopes, created_by_id=row.created_by_id
    )


def api_key_cache_clear() -> None:
    """For tests and for operators' scripts that need a revocation seen at once in this process."""
    _key_cache.clear()
