"""Authentication backends."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import backends
from django.core.exceptions import PermissionDenied


def is_demo_account_refused(email: str | None) -> bool:
    """True when ``email`` is the demo operator's (seed_demo) and production mode is on."""
    demo = getattr(settings, "TIERLAB_DEMO_OPERATOR_EMAIL", "")
    return bool(settings.PRODUCTION and demo and email and email.strip().lower() == demo.lower())


class ModelBackend(backends.ModelBackend):
    """Django's ModelBackend (email + password), refusing the demo operator in production mode.

    First in AUTHENTICATION_BACKENDS: raising PermissionDenied stops Django's authenticate() here, so
    neither the admin login nor allauth's login (the next backend) accepts the account, even when a
    database from the embedded default, with the demo's published password, was carried over. A
    session the account already had is refused too (``get_user`` asks ``user_can_authenticate``).
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        email = username if username is not None else kwargs.get("email")
        if is_demo_account_refused(email):
            raise PermissionDenied("The demo account cannot log in in production mode.")
        return super().authenticate(request, username=username, password=password, **kwargs)

    def user_can_authenticate(self, user) -> bool:
        if is_demo_account_refused(getattr(user, "email", None)):
            return False
        return super().user_can_authenticate(user)
