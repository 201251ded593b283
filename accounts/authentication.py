from __future__ import annotations

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from accounts.models import Team
from accounts.selectors import api_key_authenticate


class ApiKeyPrincipal:
    """The "user" of a request authenticated by an API key: it acts for the key's team."""

    is_authenticated = True
    is_anonymous = False

    def __init__(
        self, *, team: Team, key_id: int, scopes: frozenset[str] = frozenset(), created_by_id: int | None = None
    ):
        self.team = team
        self.key_id = key_id
        self.scopes = scopes
        self.created_by_id = created_by_id  # the user it acts as (accounts.selectors.actor_for_request)
        self.pk = None  # no User row: accounts.throttling buckets it by key id and team id instead

    def __str__(self) -> str:
        return f"API key {self.key_id}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer tl-...`` for the account API, as on the model API."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode(errors="replace")
        if header[: len(self.keyword) + 1].lower() != f"{self.keyword.lower()} ":  # case-insensitive scheme
            return None
        key = api_key_authenticate(raw_key=header[len(self.keyword) + 1 :].strip(), now=timezone.now())
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid API key: it is wrong, revoked or expired.")
        principal = ApiKeyPrincipal(
            team=Team.objects.get(pk=key.team_id), key_id=key.key_id, scopes=key.scopes, created_by_id=key.created_by_id
        )
        return principal, key

    def authenticate_header(self, request) -> str:
        return self.keyword


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents the API-key scheme in the OpenAPI schema (drf-spectacular finds it by subclassing)."""

    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A TierLab API key: `tl-...`"}
