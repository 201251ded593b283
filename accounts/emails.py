"""Email to a team: rendered from a plain-text template and sent to the team's owners. Billing, usage
alerts and licence decisions all send through here.

A failing mail server is logged, not raised: the step that sends (a charge, an alert, a decision)
has happened already, and a lost email must not turn it into a failure that is retried (and would
send again). Callers that retry a send use the returned flag.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.core.mail import send_mail
from django.template.loader import render_to_string

from accounts.models import Membership

logger = logging.getLogger(__name__)

SUBJECT_PREFIX = "[TierLab] "


def team_owner_emails(*, team_id: int) -> list[str]:
    """Where billing emails go: every owner of the team (a personal team has exactly one)."""
    return sorted(
        Membership.objects.filter(team_id=team_id, role=Membership.Role.OWNER).values_list("user__email", flat=True)
    )


def team_email_send(*, team_id: int, subject: str, template: str, context: Mapping[str, Any]) -> bool:
    """Render the plain-text ``template`` (a template path) and send it to the team's owners. Returns
    False, logged, when the team has no owner or the mail server fails (see the module docstring: a
    lost email must not fail the step that sent it; callers that retry use the result)."""
    recipients = team_owner_emails(team_id=team_id)
    if not recipients:
        logger.warning("email %r for team %s: the team has no owner to send it to", template, team_id)
        return False
    body = render_to_string(template, dict(context)).strip() + "\n"
    try:
        send_mail(SUBJECT_PREFIX + subject, body, None, recipients, fail_silently=False)
    except Exception:
        logger.exception("email %r for team %s could not be sent", template, team_id)
        return False
    return True
