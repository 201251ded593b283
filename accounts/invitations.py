"""Invitations: owners and admins invite a person by email with a role; the email carries a signed link
that expires after INVITATION_DAYS; the person accepts it signed in (or signed up) with that address.

The link is ``/invitations/<token>/`` where the token is Django's signed, timestamped
``{"i": invitation id, "n": nonce}`` (django.core.signing, its own salt): it cannot be forged or
altered, says nothing but the id, and stops working after INVITATION_DAYS even if the row said
otherwise. The row is the authority on the rest: revoked, accepted, its own ``expires_at``, and the
``nonce``, which a re-send replaces, so only the latest link works.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.core import signing
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.emails import invitation_email_send
from accounts.models import INVITATION_DAYS, AuditEntry, Invitation, Membership, Team, User, invitation_nonce
from accounts.roles import TeamAction, team_role_check
from accounts.services import audit_entry_create
from core.errors import ApplicationError

_SALT = "tierlab.accounts.invitation"
# The address of the invitation a visitor opened: signing up with it from there needs no separate
# confirmation email, since the link came to that mailbox (tiers.adapters.AccountAdapter.is_email_verified).
INVITED_EMAIL_SESSION_KEY = "tierlab_invited_email"


class InvitationError(ApplicationError):
    code = "invalid_invitation"


class AlreadyMember(ApplicationError):
    status = 409
    code = "already_member"


class InvitationPending(ApplicationError):
    status = 409
    code = "invitation_pending"


class InvitationClosed(ApplicationError):
    """409: the invitation was accepted or revoked; it cannot be re-sent or revoked (again)."""

    status = 409
    code = "invitation_closed"


class InvitationInvalid(ApplicationError):
    """404: the link is not one of ours (altered, cut, or replaced by a re-sent one)."""

    status = 404
    code = "invitation_invalid"


class InvitationGone(ApplicationError):
    """410: the link was ours but no longer works: expired, revoked, or accepted by someone."""

    status = 410
    code = "invitation_gone"


class InvitationWrongUser(ApplicationError):
    """403: the invitation is for another address than the signed-in user's."""

    status = 403
    code = "invitation_wrong_email"


def invitation_token(invitation: Invitation) -> str:
    """The signed token of ``invitation``'s current link (changes when it is re-sent)."""
    return signing.dumps({"i": invitation.pk, "n": invitation.nonce}, salt=_SALT)


def _role_check(*, team: Team, actor: User | None, role: str) -> None:
    team_role_check(team=team, actor=actor, action=TeamAction.MEMBERS_MANAGE)
    if role == Membership.Role.OWNER:
        team_role_check(team=team, actor=actor, action=TeamAction.OWNERSHIP)


def _send(invitation: Invitation) -> None:
    invitation_id, token = invitation.pk, invitation_token(invitation)
    # After commit: no email for an invitation that was rolled back.
    transaction.on_commit(lambda: invitation_email_send(invitation_id=invitation_id, token=token))


@transaction.atomic
def invitation_create(
    *, team: Team, email: str, role: str, actor: User | None, now: datetime | None = None
) -> Invitation:
    """Invite ``email`` to ``team`` as ``role`` and email the link; audited. Owners and admins invite;
    only owners invite owners. A member's address answers 409 ``already_member``; an address with a
    pending invitation 409 ``invitation_pending`` (re-send or revoke it); an expired one is renewed
    (new role, new link)."""
    now = now or timezone.now()
    email = User.objects.normalize_email((email or "").strip()).lower()
    if role not in Membership.Role.values:
        raise InvitationError(f"Roles are {', '.join(Membership.Role.values)}.", extra={"field": "role"})
    _role_check(team=team, actor=actor, role=role)
    if Membership.objects.filter(team=team, user__email__iexact=email).exists():
        raise AlreadyMember(f"{email} is already a member of {team.name}.", extra={"field": "email"})
    expires_at = now + timedelta(days=INVITATION_DAYS)
    existing = Invitation.objects.select_for_update().filter(
        team=team, email__iexact=email, accepted_at__isnull=True, revoked_at__isnull=True
    )
    invitation = existing.first()
    if invitation is not None and invitation.expires_at > now:
        raise InvitationPending(
            f"{email} has a pending invitation already: re-send or revoke it.", extra={"field": "email"}
        )
    if invitation is not None:  # expired: renewed, as a new invitation would be
        invitation.role, invitation.invited_by, invitation.nonce = role, actor, invitation_nonce()
        invitation.sent_at, invitation.expires_at, invitation.send_count = now, expires_at, invitation.send_count + 1
        invitation.save(update_fields=["role", "invited_by", "nonce", "sent_at", "expires_at", "send_count"])
    else:
        invitation = Invitation(
            team=team, email=email, role=role, invited_by=actor, created_at=now, sent_at=now, expires_at=expires_at
        )
        invitation.full_clean()
        try:
            with transaction.atomic():
                invitation.save()
        except IntegrityError as exc:  # a concurrent invitation of the same address won
            raise InvitationPending(f"{email} has a pending invitation already.", extra={"field": "email"}) from exc
    audit_entry_create(
        team_id=team.pk,
        actor=actor,
        action=AuditEntry.Action.INVITATION_SENT,
        description=f"{email} invited as {role}; the link expires {expires_at:%Y-%m-%d %H:%M} UTC",
        data={"invitation_id": invitation.pk, "email": email, "role": role},
        now=now,
    )
    _send(invitation)
    return invitation


def _open_locked(invitation: Invitation) -> Invitation:
    locked = Invitation.objects.select_for_update().select_related("team").get(pk=invitation.pk)
    if locked.accepted_at is not None:
        raise InvitationClosed(f"The invitation of {locked.email} was accepted already.")
    return locked


@transaction.atomic
def invitation_resend(*, invitation: Invitation, actor: User | None, now: datetime | None = None) -> Invitation:
    """Email a new link (the old one stops working) valid for INVITATION_DAYS from now; audited."""
    now = now or timezone.now()
    locked = _open_locked(invitation)
    _role_check(team=locked.team, actor=actor, role=locked.role)
    if locked.revoked_at is not None:
        raise InvitationClosed(f"The invitation of {locked.email} was revoked: invite them again instead.")
    locked.nonce, locked.sent_at = invitation_nonce(), now
    locked.expires_at, locked.send_count = now + timedelta(days=INVITATION_DAYS), locked.send_count + 1
    locked.save(update_fields=["nonce", "sent_at", "expires_at", "send_count"])
    audit_entry_create(
        team_id=locked.team_id,
        actor=actor,
        action=AuditEntry.Action.INVITATION_RESENT,
        description=f"Invitation of {locked.email} re-sent (send {locked.send_count})",
        data={"invitation_id": locked.pk, "email": locked.email},
        now=now,
    )
    _send(locked)
    return locked


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: User | None, now: datetime | None = None) -> Invitation:
    """Revoke a pending (or expired) invitation: its link stops working; audited. Idempotent."""
    now = now or timezone.now()
    locked = _open_locked(invitation)
    _role_check(team=locked.team, actor=actor, role=locked.role)
    if locked.revoked_at is None:
        locked.revoked_at = now
        locked.save(update_fields=["revoked_at"])
        audit_entry_create(
            team_id=locked.team_id,
            actor=actor,
            action=AuditEntry.Action.INVITATION_REVOKED,
            description=f"Invitation of {locked.email} ({locked.role}) revoked",
            data={"invitation_id": locked.pk, "email": locked.email},
            now=now,
        )
    return locked


def invitation_from_token(token: str, *, now: datetime | None = None) -> Invitation:
    """The invitation ``token`` names, while its link works: InvitationInvalid (404) for a token that is
    not ours or was replaced by a re-send, InvitationGone (410) once it expired, was revoked or accepted
    (the caller shows an accepted one to the user who accepted it)."""
    now = now or timezone.now()
    try:
        data = signing.loads(token, salt=_SALT, max_age=timedelta(days=INVITATION_DAYS))
    except signing.SignatureExpired as exc:
        raise InvitationGone(
            "This invitation has expired: ask the team for a new one.", code="invitation_expired"
        ) from exc
    except signing.BadSignature as exc:
        raise InvitationInvalid("This invitation link is not valid: check it was copied whole.") from exc
    invitation = (
        Invitation.objects.select_related("team", "invited_by").filter(pk=data.get("i"), nonce=data.get("n")).first()
        if isinstance(data, dict)
        else None
    )
    if invitation is None:
        raise InvitationInvalid("This invitation link is not valid any more: a newer one may have been sent.")
    return invitation


def invitation_accept_refusal(invitation: Invitation, *, user: User | None, now: datetime) -> ApplicationError | None:
    """Why ``user`` cannot accept ``invitation`` now (the error invitation_accept would raise), or None:
    it expired, was revoked or accepted (410), is for another address (403), or the user is a member
    already (409). ``user`` None (not signed in yet): the invitation's own state only. The invitation
    page shows it before anyone presses the button."""
    if invitation.revoked_at is not None:
        return InvitationGone("This invitation was revoked.", code="invitation_revoked")
    if invitation.accepted_at is not None:
        return InvitationGone("This invitation was accepted already.", code="invitation_used")
    if invitation.expires_at <= now:
        return InvitationGone("This invitation has expired: ask the team for a new one.", code="invitation_expired")
    if user is None:
        return None
    if user.email.lower() != invitation.email.lower():
        return InvitationWrongUser(
            f"This invitation is for {invitation.email}, and you are signed in as {user.email}. "
            f"Sign out, then sign in or sign up as {invitation.email}."
        )
    if Membership.objects.filter(team_id=invitation.team_id, user=user).exists():
        return AlreadyMember(f"You are already a member of {invitation.team.name}.")
    return None


@transaction.atomic
def invitation_accept(*, invitation: Invitation, user: User, now: datetime | None = None) -> Membership:
    """``user`` joins the invitation's team with its role; audited. The user must be signed in with the
    invited address (403 ``invitation_wrong_email``); a member already answers 409 ``already_member``
    and changes nothing; accepting again, by the same user, is answered with their membership."""
    now = now or timezone.now()
    locked = Invitation.objects.select_for_update().select_related("team").get(pk=invitation.pk)
    if locked.accepted_at is not None and locked.accepted_by_id == user.pk:
        membership = Membership.objects.filter(team=locked.team, user=user).first()
        if membership is not None:
            return membership
    refusal = invitation_accept_refusal(locked, user=user, now=now)
    if refusal is not None:
        raise refusal
    membership = Membership.objects.create(team=locked.team, user=user, role=locked.role)
    locked.accepted_at, locked.accepted_by = now, user
    locked.save(update_fields=["accepted_at", "accepted_by"])
    audit_entry_create(
        team_id=locked.team_id,
        actor=user,
        action=AuditEntry.Action.MEMBER_JOINED,
        description=f"{user.email} joined as {locked.role} (invited by "
        f"{locked.invited_by.email if locked.invited_by else 'the system'})",
        data={"invitation_id": locked.pk, "user_id": user.pk, "role": locked.role},
        now=now,
    )
    return membership
