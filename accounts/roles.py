"""Who may do what in a team: the one table of roles and the one check (DESIGN.md, "Teams, roles, key
scopes"). Every service that changes a team's billing, keys, spend cap, members or licence, and every
page or API read that only some roles may see, asks ``team_role_check``; pages, the account API and
commands therefore agree, whichever door a request comes in by.

Who acts (``actor``):
- a person on a page or the account API with a session: that ``User``, with their role in the team;
- an API key: the user who created it, with their role *now* (a key made by an admin who was later made
  a member acts as a member; the key's scopes limit it further, accounts.permissions.HasKeyScope);
- ``None``: the system, not a team member. Management commands, Celery tasks, operators' services in
  the admin, and keys without a creator (issued by an operator's command) act as the system: no role
  applies to them. Operators' own actions have their own services (suspend, comp, move tier...).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from accounts.models import Membership
from core.errors import ApplicationError

if TYPE_CHECKING:
    from accounts.models import Team, User


class TeamAction(StrEnum):
    VIEW = "view"  # the dashboard, usage, the subscription's tier, members, licence status
    KEYS_OWN = "keys_own"  # create keys; see and revoke the keys one created
    KEYS_ALL = "keys_all"  # see and revoke every key of the team; grant the manage scope
    BILLING_VIEW = "billing_view"  # the billing page, invoices
    BILLING_MANAGE = "billing_manage"  # subscribe, change tier, cancel, resume, the card, the spend cap
    LICENSE_MANAGE = "license_manage"  # licence requests, MAU reports
    MEMBERS_MANAGE = "members_manage"  # invitations (see, send, re-send, revoke), roles, removing members
    OWNERSHIP = "ownership"  # make or unmake owners, transfer ownership


_MEMBER = frozenset({TeamAction.VIEW, TeamAction.KEYS_OWN})
_BILLING = _MEMBER | {TeamAction.BILLING_VIEW, TeamAction.BILLING_MANAGE}
_ADMIN = _BILLING | {TeamAction.KEYS_ALL, TeamAction.LICENSE_MANAGE, TeamAction.MEMBERS_MANAGE}
_OWNER = _ADMIN | {TeamAction.OWNERSHIP}

# Each role includes the one below it: member < billing < admin < owner. ``billing`` is a member who
# also runs the bill (the finance person of SaaS team roles); admins run everything but ownership.
ROLE_ACTIONS: dict[str, frozenset[TeamAction]] = {
    Membership.Role.OWNER: _OWNER,
    Membership.Role.ADMIN: _ADMIN,
    Membership.Role.BILLING: _BILLING,
    Membership.Role.MEMBER: _MEMBER,
}

_WHAT = {
    TeamAction.VIEW: "see this team",
    TeamAction.KEYS_OWN: "manage API keys",
    TeamAction.KEYS_ALL: "manage other people's API keys",
    TeamAction.BILLING_VIEW: "see billing and invoices",
    TeamAction.BILLING_MANAGE: "change billing (tier, card, spend cap)",
    TeamAction.LICENSE_MANAGE: "manage licence requests and MAU reports",
    TeamAction.MEMBERS_MANAGE: "manage members and invitations",
    TeamAction.OWNERSHIP: "change owners",
}


class RoleForbidden(ApplicationError):
    """403: the acting user's role in the team does not allow this (or they are not in the team)."""

    status = 403
    code = "role_forbidden"


def role_allows(role: str | None, action: TeamAction) -> bool:
    return role is not None and action in ROLE_ACTIONS.get(role, frozenset())


def team_role(*, team: Team, user: User) -> str | None:
    """``user``'s role in ``team``, or None if they are not a member."""
    return Membership.objects.filter(team=team, user=user).values_list("role", flat=True).first()


def team_role_check(*, team: Team, actor: User | None, action: TeamAction) -> str | None:
    """Raise RoleForbidden unless ``actor`` may do ``action`` in ``team``; return their role (None for
    the system, ``actor=None``, which no role limits: see the module docstring)."""
    if actor is None:
        return None
    role = team_role(team=team, user=actor)
    if not role_allows(role, action):
        who = f"your role ({role})" if role else "you are not a member of this team, so it"
        raise RoleForbidden(
            f"Not allowed: {who} does not let you {_WHAT[action]} in {team.name}. Ask an owner or admin.",
            extra={"role": role, "action": str(action)},
        )
    return role
