"""Usage emails: an alert crossed (80% / 100% of the included tokens, the spend cap).

Plain text, to the team's owners, like the billing emails (accounts/emails.py). "Exactly once per alert"
is usage/alerts.py's job (the unique alert row and the emailed_at claim); this only renders and sends.
A failing mail server is logged and reported as False, so the caller can retry later.
"""

from __future__ import annotations

from accounts.emails import team_email_send
from core.templatetags.tier_format import money
from usage.models import UsageAlert

SUBJECTS = {
    UsageAlert.Kind.TOKENS_80: "You have used 80% of your monthly tokens",
    UsageAlert.Kind.TOKENS_100: "You have used all of your monthly tokens",
    UsageAlert.Kind.SPEND_CAP: "Your spend cap was reached",
}


def usage_alert_send(*, alert_id: int) -> bool:
    alert = UsageAlert.objects.select_related("team").get(pk=alert_id)
    from tiers.selectors import subscription_current
    from usage.selectors import usage_estimate_for_subscription

    subscription = subscription_current(team=alert.team)
    estimate = (
        usage_estimate_for_subscription(subscription=subscription, now=alert.created_at) if subscription else None
    )
    context = {
        "alert": alert,
        "team_name": alert.team.name,
        "estimate": estimate,
        "estimated_total": money(estimate.estimated_total_cents, estimate.currency) if estimate else "",
        "spend_cap": (
            money(estimate.spend_cap_cents, estimate.currency)
            if estimate and estimate.spend_cap_cents is not None
            else ""
        ),
    }
    return team_email_send(
        team_id=alert.team_id, subject=SUBJECTS[alert.kind], template="usage/email/usage_alert.txt", context=context
    )
