from __future__ import annotations

from accounts.models import Membership, Team, User


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
