from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.core.exceptions import PermissionDenied
from django.db import transaction

from accounts.backends import is_demo_account_refused
from accounts.emails import site_url
from accounts.invitations import INVITED_EMAIL_SESSION_KEY
from tiers import services


class AccountAdapter(DefaultAccountAdapter):
    """Hooks TierLab's account set-up into allauth's sign-up, and refuses the demo account in production."""

    def pre_login(self, request, user, **kwargs):
        # Every allauth login goes through here, including those without a password (login on email
        # confirmation); password logins are refused earlier, by accounts.backends.
        if is_demo_account_refused(user.email):
            raise PermissionDenied("The demo account cannot log in in production mode.")
        return super().pre_login(request, user, **kwargs)

    def is_email_verified(self, request, email: str) -> bool:
        # Signing up from an invitation's link (accounts.views.invitation_accept) with the invited
        # address: the link came to that mailbox, which is what a confirmation email would show.
        invited = request.session.get(INVITED_EMAIL_SESSION_KEY) if request is not None else None
        return bool(invited and invited.lower() == email.lower()) or super().is_email_verified(request, email)

    def send_mail(self, template_prefix: str, email: str, context: dict) -> None:
        # allauth names the site after the request's host ("Hello from 127.0.0.1:8000!"): TierLab's
        # emails name TierLab and its address (templates/account/email/base_message.txt).
        super().send_mail(template_prefix, email, {"tierlab_site_url": site_url(), **context})

    def save_user(self, request, user, form, commit=True):
        # The user row and its team + free subscription are written together, or not at all.
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=commit)
            if commit:
                services.account_setup_new_user(user=user)
        return user
