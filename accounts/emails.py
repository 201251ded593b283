"""Email to a team: rendered from a plain-text template and sent to the team's owners. Billing, usage
alerts and licence decisions all send through here; invitations go to the invited address.

Every email names TierLab and links with absolute URLs on ``TIERLAB_SITE_URL`` (``site_url``; a
template gets it as ``site_url``): an email is read outside the site, often from a worker that has no
request to take a host from.

A failing mail server is logged, not raised: the step that sends (a charge, an alert, a decision)
has happened already, and a lost email must not turn it into a failure that is retried (and would
send again). Callers that retry a send use the returned flag.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse

from accounts.models import Invitation, Membership

logger = logging.getLogger(__name__)

SUBJECT_PREFIX = "[TierLab] "


def team_owner_emails(*, team_id: int) -> list[str]:
    """Where billing emails go: every owner of the team (a personal team has exactly one)."""
    return sorted(
        Membership.objects.filter(team_id=team_id, role=Membership.Role.OWNER).values_list("user__email", flat=True)
    )


def team_owner_emails_many(*, team_ids: list[int]) -> dict[int, list[str]]:
    """``team_owner_emails`` of many teams in one query: team id -> its owners' emails (sorted)."""
    owners: dict[int, list[str]] = {team_id: [] for team_id in team_ids}
    rows = Membership.objects.filter(team_id__in=team_ids, role=Membership.Role.OWNER).values_list(
        "team_id", "user__email"
    )
    for team_id, email in rows:
        owners[team_id].append(email)
    return {team_id: sorted(emails) for team_id, emails in owners.items()}


def site_url(path: str = "") -> str:
    """The absolute URL of ``path`` (e.g. "/billing/") on the site, for emails."""
    return settings.TIERLAB_SITE_URL.rstrip("/") + path


def _email_send(*, recipients: list[str], subject: str, template: str, context: Mapping[str, Any], what: str) -> bool:
    body = render_to_string(template, {"site_url": site_url(), **context}).strip() + "\n"
    try:
        send_mail(SUBJECT_PREFIX + subject, body, None, recipients, fail_silently=False)
    except Exception:
        logger.exception("email %r for %s could not be sent", template, what)
        return False
    return True


def team_email_send(
    *, team_id: int, subject: str, template: str, context: Mapping[str, Any], owners: list[str] | None = None
) -> bool:
    """Render the plain-text ``template`` (a template path) and send it to the team's owners (``owners``
    when the caller has read them already: ``team_owner_emails_many``). Returns False, logged, when the
    team has no owner or the mail server fails (see the module docstring: a lost email must not fail the
    step that sent it; callers that retry use the result)."""
    recipients = team_owner_emails(team_id=team_id) if owners is None else owners
    if not recipients:
        logger.warning("email %r for team %s: the team has no owner to send it to", template, team_id)
        return False
    return _email_send(
        recipients=recipients, subject=subject, template=template, context=context, what=f"team {team_id}"
    )


def invitation_email_send(*, invitation_id: int, token: str) -> bool:
    """Email the invitation's link (``token``, accounts.invitations) to the invited address."""
    invitation = Invitation.objects.select_related("team", "invited_by").get(pk=invitation_id)
    inviter = invitation.invited_by.email if invitation.invited_by else "TierLab"
    return _email_send(
        recipients=[invitation.email],
        subject=f"{inviter} invited you to {invitation.team.name}",  # after SUBJECT_PREFIX "[TierLab] "
        template="accounts/email/invitation.txt",
        context={
            "invitation": invitation,
            "inviter": inviter,
            "role": invitation.get_role_display(),
            "accept_url": site_url(reverse("invitation-accept", args=[token])),
        },
        what=f"invitation {invitation_id}",
    )
