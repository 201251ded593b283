"""The pages' door to a team: signed in, acting for the current team, with a role that allows the page."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.roles import RoleForbidden, TeamAction, team_role_check
from accounts.selectors import team_for_request


def forbidden_page(request: HttpRequest, error: RoleForbidden) -> HttpResponse:
    """The 403 page of a role refusal: what was refused and who to ask."""
    return render(request, "accounts/forbidden.html", {"message": error.message}, status=403)


def team_page(action: TeamAction = TeamAction.VIEW) -> Callable:
    """Decorate a page that acts on the current team (accounts.selectors.team_for_request): it is set
    on ``request.team`` and the view runs only if the user's role allows ``action`` (403 page
    otherwise: accounts.roles.team_role_check, the check the services make); a user without a team
    gets a 404. A RoleForbidden raised by a service the view calls is shown the same way."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            team = team_for_request(request)
            if team is None:
                raise Http404("No team")
            try:
                request.team_role = team_role_check(team=team, actor=request.user, action=action)
                request.team = team
                return view(request, *args, **kwargs)
            except RoleForbidden as error:
                return forbidden_page(request, error)

        return wrapped

    return decorator
