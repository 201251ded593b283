from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from accounts.models import ApiKey
from accounts.selectors import AuthenticatedKey, team_for_request
from accounts.services import InsufficientScope


class IsTeamMember(BasePermission):
    """Authenticated, and acting for a team: a session user's team, or an API key's team."""

    message = "Log in or send an API key: 'Authorization: Bearer <key>'."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and team_for_request(request) is not None)


def api_key_scope_required(method: str) -> str:
    """The scope an API key needs for an account-API request: reads (GET, HEAD, OPTIONS) need ``read``,
    every write (keys, subscription, spend cap, licence requests, MAU reports) ``manage``."""
    return ApiKey.Scope.READ if method in SAFE_METHODS else ApiKey.Scope.MANAGE


class HasKeyScope(BasePermission):
    """The one check of API key scopes on the account API (a default permission class): a request
    authenticated by a key needs the scope its method implies, else 403 ``insufficient_scope``.
    Sessions are not affected: what a person may do is their role's to say. The scopes come with the
    cached authenticated key (``request.auth``), so the check costs no query."""

    def has_permission(self, request, view) -> bool:
        key = request.auth
        if not isinstance(key, AuthenticatedKey):
            return True
        if not hasattr(view, request.method.lower()):
            return True  # the view answers 405 with Allow: no scope makes an unsupported method work
        scope = api_key_scope_required(request.method)
        if not key.has_scope(scope):
            raise InsufficientScope(
                f"This API key lacks the '{scope}' scope needed for {request.method} {request.path}. "
                "Create a key with it on the keys page (owners and admins can grant 'manage')."
            )
        return True
