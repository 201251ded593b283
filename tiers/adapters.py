from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.core.exceptions import PermissionDenied
from django.db import transaction

from accounts.backends import is_demo_account_refused
from tiers import services


class AccountAdapter(DefaultAccountAdapter):
    """Hooks TierLab's account set-up into allauth's sign-up, and refuses the demo account in production."""

    def pre_login(self, request, user, **kwargs):
        # Every allauth login goes through here, including those without a password (login on email
        # confirmation); password logins are refused earlier, by accounts.backends.
        if is_demo_account_refused(user.email):
            raise PermissionDenied("The demo account cannot log in in production mode.")
        return super().pre_login(request, user, **kwargs)

    def save_user(self, request, user, form, commit=True):
        # The user row and its team + free subscription are written together, or not at all.
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=commit)
            if commit:
                services.account_setup_new_user(user=user)
        return user
