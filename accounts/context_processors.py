"""The team switcher of the navigation bar: the signed-in person's teams and the current one."""

from __future__ import annotations

from functools import cached_property

from accounts.roles import TeamAction, role_allows
from accounts.selectors import team_for_request, team_memberships


class NavTeams:
    """Read by base.html, lazily: a page that draws no navigation bar runs no query for it."""

    def __init__(self, request):
        self._request = request

    @cached_property
    def memberships(self) -> list:
        return list(team_memberships(user=self._request.user))

    @cached_property
    def current(self):
        return team_for_request(self._request)

    @cached_property
    def role(self) -> str:
        current = self.current
        return next((m.role for m in self.memberships if current is not None and m.team_id == current.pk), "")

    @cached_property
    def can_see_billing(self) -> bool:
        return role_allows(self.role or None, TeamAction.BILLING_VIEW)


def teams(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not hasattr(user, "memberships"):
        return {}
    return {"nav_teams": NavTeams(request)}
