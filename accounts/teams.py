"""Every write to a team's members: roles, removal, leaving, ownership transfer. Each is checked against
the acting user's role (accounts.roles), keeps at least one owner, and is written to the team's audit
trail in the same transaction.

A team's membership changes are serialised by locking the team's row first (``_team_locked``): two
owners demoting each other at once would otherwise both see "another owner is left" and leave none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, AuditEntry, Membership, Team, User
from accounts.roles import TeamAction, team_role_check
from accounts.services import audit_entry_create
from core.errors import ApplicationError
from core.invalidation import cache_invalidations_apply


class MembershipError(ApplicationError):
    code = "invalid_membership_change"


class LastOwner(ApplicationError):
    """409: the change would leave the team without an owner."""

    status = 409
    code = "last_owner"


@dataclass(frozen=True)
class MemberRemoved:
    membership: Membership  # as it was (no longer saved)
    keys_revoked: int
    left: bool  # the member removed themselves


def _team_locked(team_id: int) -> Team:
    return Team.objects.select_for_update().get(pk=team_id)


def _owner_check(*, membership: Membership, actor: User | None, new_role: str | None, leaving: bool = False) -> None:
    """Making or unmaking an owner needs an owner (admins run everything else; leaving is one's own
    business); a change that leaves no owner is refused (409 ``last_owner``): transfer ownership or
    make someone else an owner first. ``new_role`` None: the membership goes."""
    touches_owner = membership.role == Membership.Role.OWNER or new_role == Membership.Role.OWNER
    if touches_owner and not leaving:
        team_role_check(team=membership.team, actor=actor, action=TeamAction.OWNERSHIP)
    if membership.role == Membership.Role.OWNER and new_role != Membership.Role.OWNER:
        others = (
            Membership.objects.filter(team_id=membership.team_id, role=Membership.Role.OWNER)
            .exclude(pk=membership.pk)
            .exists()
        )
        if not others:
            raise LastOwner(
                f"{membership.user.email} is the last owner of {membership.team.name}: make someone else an owner "
                "(or transfer ownership) first."
            )


def _by(actor: User | None, by_operator: bool) -> str:
    if actor is None:
        return "the system"
    return f"operator {actor.email}" if by_operator else actor.email


@transaction.atomic
def membership_role_set(
    *,
    membership: Membership,
    role: str,
    actor: User | None,
    by_operator: bool = False,
    now: datetime | None = None,
) -> Membership:
    """Give ``membership`` the ``role``; audited. Owners and admins change roles; only owners make or
    unmake owners; the last owner keeps the role. ``by_operator``: an operator in the admin (no role of
    theirs applies; the last-owner rule does)."""
    now = now or timezone.now()
    if role not in Membership.Role.values:
        raise MembershipError(f"Roles are {', '.join(Membership.Role.values)}; got {role!r}.", extra={"field": "role"})
    _team_locked(membership.team_id)
    locked = Membership.objects.select_related("user", "team").get(pk=membership.pk)
    checker = None if by_operator else actor
    team_role_check(team=locked.team, actor=checker, action=TeamAction.MEMBERS_MANAGE)
    if locked.role == role:
        return locked
    _owner_check(membership=locked, actor=checker, new_role=role)
    was = locked.role
    locked.role = role
    locked.save(update_fields=["role"])
    audit_entry_create(
        team_id=locked.team_id,
        actor=actor,
        action=AuditEntry.Action.ROLE_CHANGED,
        description=f"{locked.user.email}: {was} -> {role}, by {_by(actor, by_operator)}",
        data={"user_id": locked.user_id, "email": locked.user.email, "from": was, "to": role, "operator": by_operator},
        now=now,
    )
    return locked


@transaction.atomic
def membership_remove(
    *, membership: Membership, actor: User | None, by_operator: bool = False, now: datetime | None = None
) -> MemberRemoved:
    """Take ``membership``'s user out of the team and revoke every key of the team they created (the
    model API refuses them within the auth cache's TTL); audited. Owners and admins remove members,
    only owners remove owners, anyone may leave (the same call on their own membership), and the last
    owner may do neither."""
    now = now or timezone.now()
    _team_locked(membership.team_id)
    locked = Membership.objects.select_related("user", "team").get(pk=membership.pk)
    checker = None if by_operator else actor
    leaving = actor is not None and actor.pk == locked.user_id and not by_operator
    if not leaving:
        team_role_check(team=locked.team, actor=checker, action=TeamAction.MEMBERS_MANAGE)
    _owner_check(membership=locked, actor=checker, new_role=None, leaving=leaving)
    revoked = ApiKey.objects.filter(
        team_id=locked.team_id, created_by_id=locked.user_id, revoked_at__isnull=True
    ).update(revoked_at=now)
    locked.delete()
    locked.pk = membership.pk  # for the caller's message; the row is gone
    email = locked.user.email
    audit_entry_create(
        team_id=locked.team_id,
        actor=actor,
        action=AuditEntry.Action.MEMBER_LEFT if leaving else AuditEntry.Action.MEMBER_REMOVED,
        description=(
            f"{email} left ({locked.role})"
            if leaving
            else f"{email} ({locked.role}) removed by {_by(actor, by_operator)}"
        )
        + f"; {revoked} API key{'s' if revoked != 1 else ''} they created revoked",
        data={"user_id": locked.user_id, "email": email, "role": locked.role, "keys_revoked": revoked},
        now=now,
    )
    # This process refuses the keys at once (its feed read now), the others at their next poll.
    transaction.on_commit(cache_invalidations_apply)
    return MemberRemoved(membership=locked, keys_revoked=revoked, left=leaving)


@transaction.atomic
def team_ownership_transfer(
    *, team: Team, to: Membership, actor: User, now: datetime | None = None
) -> tuple[Membership, Membership]:
    """``actor``, an owner, hands the team to ``to``: ``to`` becomes an owner and ``actor`` an admin, in
    one step; audited. Returns (new owner, former owner)."""
    now = now or timezone.now()
    _team_locked(team.pk)
    team_role_check(team=team, actor=actor, action=TeamAction.OWNERSHIP)
    target = Membership.objects.select_related("user").filter(pk=to.pk, team=team).first()
    if target is None:
        raise MembershipError("Ownership can only go to a member of this team.", extra={"field": "member"})
    if target.user_id == actor.pk:
        raise MembershipError("You own this team already: choose another member.", extra={"field": "member"})
    mine = Membership.objects.get(team=team, user=actor)
    was = target.role
    target.role = Membership.Role.OWNER
    target.save(update_fields=["role"])
    mine.role = Membership.Role.ADMIN
    mine.save(update_fields=["role"])
    audit_entry_create(
        team_id=team.pk,
        actor=actor,
        action=AuditEntry.Action.OWNERSHIP_TRANSFERRED,
        description=f"Ownership transferred from {actor.email} (now admin) to {target.user.email} (was {was})",
        data={"from_user_id": actor.pk, "to_user_id": target.user_id, "to_was": was},
        now=now,
    )
    return target, mine
