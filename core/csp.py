"""Content-Security-Policy middleware: django-csp's, with a narrow exception for third-party pages.

The policy itself is ``CONTENT_SECURITY_POLICY`` in config/settings.py. drf-spectacular's Swagger UI
view (``/api/docs/``) starts Swagger with an inline ``<script>``; the paths listed in
``TIERLAB_CSP_INLINE_SCRIPT_PATHS`` get ``'unsafe-inline'`` for scripts, every other page does not.
"""

from __future__ import annotations

from csp.constants import SELF, UNSAFE_INLINE
from csp.middleware import CSPMiddleware as BaseCSPMiddleware
from csp.middleware import PolicyParts
from django.conf import settings


class CSPMiddleware(BaseCSPMiddleware):
    def get_policy_parts(self, request, response, report_only: bool = False) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only=report_only)
        prefixes = tuple(getattr(settings, "TIERLAB_CSP_INLINE_SCRIPT_PATHS", ()))
        if prefixes and request.path_info.startswith(prefixes):
            # Replaced, not added to: a hash in script-src would make browsers ignore 'unsafe-inline'.
            parts.replace = {**(parts.replace or {}), "script-src": [SELF, UNSAFE_INLINE]}
        return parts
