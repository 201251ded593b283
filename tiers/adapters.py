from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.db import transaction

from tiers import services


class AccountAdapter(DefaultAccountAdapter):
    """Hooks TierLab's account set-up into allauth's sign-up."""

    def save_user(self, request, user, form, commit=True):
        # The user row and its team + free subscription are written together, or not at all.
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=commit)
            if commit:
                services.account_setup_new_user(user=user)
        return user
