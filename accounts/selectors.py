from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ApiKey, Membership, Team, User
from accounts.services import API_KEY_MARKER, API_KEY_PREFIX_LENGTH, api_key_hash
from core.local_cache import TTLCache


def team_for_user(*, user: User) -> Team | None:
    """The team a user acts for: their personal team, else the first team they own, else any team.

    Inviting members to other teams comes later; until then this is the personal team.
    """
    membership = (
        Membership.objects.select_related("team")
        .filter(user=user)
        .order_by("-team__is_personal", "role", "created_at")
        .first()
    )
    return membership.team if membership else None


def team_for_request(request) -> Team | None:
    """The team an account-API request acts for: the API key's team, or the logged-in user's team.
    Memoised on the request."""
    if not hasattr(request, "_tierlab_team"):
        principal_team = getattr(request.user, "team", None)
        if principal_team is not None:
            request._tierlab_team = principal_team
        elif request.user.is_authenticated:
            request._tierlab_team = team_for_user(user=request.user)
        else:
            request._tierlab_team = None
    return request._tierlab_team


def api_key_list(*, team: Team) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(team=team).select_related("created_by").order_by("revoked_at", "-created_at")


@dataclass(frozen=True)
class AuthenticatedKey:
    key_id: int
    team_id: int
    name: str
    # What the key may do (ApiKey.Scope values), loaded with the key and cached with it: checking a
    # scope costs no query.
    scopes: frozenset[str]

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


_key_cache: TTLCache[str, _KeyRow | None] = TTLCache(ttl=settings.TIERLAB_AUTH_CACHE_SECONDS)


def _load_key_row(prefix: str) -> _KeyRow | None:
    row = (
        ApiKey.objects.filter(prefix=prefix)
        .values_list("id", "team_id", "name", "secret_hash", "expires_at", "revoked_at", "scopes")
        .first()
    )
    return _KeyRow(*row[:6], scopes=frozenset(row[6] or ())) if row else None


def api_key_authenticate(*, raw_key: str, now: datetime | None = None) -> AuthenticatedKey | None:
    """The key ``raw_key`` names, if it exists, matches, is not revoked and has not expired.

    One indexed lookup by prefix (cached in-process for TIERLAB_AUTH_CACHE_SECONDS, misses too), then a
    constant-time comparison of SHA-256 hashes. A revocation is therefore seen within that TTL.
    """
    row = secret_key_match(
        raw_key, marker=API_KEY_MARKER, prefix_length=API_KEY_PREFIX_LENGTH, cache=_key_cache, load=_load_key_row
    )
    if row is None:
        return None
    now = now or timezone.now()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return AuthenticatedKey(key_id=row.key_id, team_id=row.team_id, name=row.name, scopes=row.scopes)


def api_key_cache_clear() -> None:
    """For tests and for operators' scripts that need a revocation seen at once in this process."""
    _key_cache.clear()
