from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.models import User
from accounts.selectors import AuthenticatedKey, api_key_list, team_for_request
from accounts.serializers import ApiKeyCreatedSerializer, ApiKeyCreateSerializer, ApiKeySerializer


class ApiKeyListCreateApi(generics.ListAPIView):
    """List the team's API keys (never their secrets), or create one: the secret is in the response only."""

    serializer_class = ApiKeySerializer

    def get_queryset(self):
        return api_key_list(team=team_for_request(self.request))

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def post(self, request):
        data = ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key, secret = services.api_key_create(
            team=team_for_request(request),
            name=data.validated_data["name"],
            expires_at=data.validated_data.get("expires_at"),
            created_by=request.user if isinstance(request.user, User) else None,
            scopes=data.validated_data.get("scopes"),
            creator_scopes=request.auth.scopes if isinstance(request.auth, AuthenticatedKey) else None,
        )
        key.secret = secret
        return Response(ApiKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(APIView):
    """One of the team's keys; DELETE revokes it (it stays listed, as revoked). With an API key, DELETE
    needs the ``manage`` scope (accounts.permissions.HasKeyScope, as every write)."""

    def _key(self, request, key_id: int):
        # Scoped to the caller's team: another team's key id is simply not found.
        return get_object_or_404(api_key_list(team=team_for_request(request)), pk=key_id)

    @extend_schema(responses=ApiKeySerializer)
    def get(self, request, key_id: int):
        return Response(ApiKeySerializer(self._key(request, key_id)).data)

    @extend_schema(responses={200: ApiKeySerializer})
    def delete(self, request, key_id: int):
        key = services.api_key_revoke(key=self._key(request, key_id))
        return Response(ApiKeySerializer(key).data)
