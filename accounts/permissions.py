from __future__ import annotations

from rest_framework.permissions import BasePermission

from accounts.selectors import team_for_request


class IsTeamMember(BasePermission):
    """Authenticated, and acting for a team: a session user's team, or an API key's team."""

    message = "Log in or send an API key: 'Authorization: Bearer <key>'."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and team_for_request(request) is not None)
