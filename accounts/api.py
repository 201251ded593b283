from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import invitations, services, teams
from accounts.roles import team_role
from accounts.selectors import (
    AuthenticatedKey,
    actor_for_request,
    api_key_get_visible,
    api_key_list_visible,
    invitation_list_for,
    team_for_request,
    team_member_list,
)
from accounts.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    InvitationCreateSerializer,
    InvitationSerializer,
    MemberRemovedSerializer,
    MemberRoleSerializer,
    MemberSerializer,
    TeamSerializer,
)


class ApiKeyListCreateApi(generics.ListAPIView):
    """List the team's API keys (never their secrets), or create one: the secret is in the response only.
    Owners and admins see every key of the team; the other roles the keys they created."""

    serializer_class = ApiKeySerializer

    def get_queryset(self):
        return api_key_list_visible(team=team_for_request(self.request), actor=actor_for_request(self.request))

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def post(self, request):
        data = ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key, secret = services.api_key_create(
            team=team_for_request(request),
            name=data.validated_data["name"],
            expires_at=data.validated_data.get("expires_at"),
            created_by=actor_for_request(request),
            scopes=data.validated_data.get("scopes"),
            creator_scopes=request.auth.scopes if isinstance(request.auth, AuthenticatedKey) else None,
        )
        key.secret = secret
        return Response(ApiKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(APIView):
    """One of the team's keys; DELETE revokes it (it stays listed, as revoked). With an API key, DELETE
    needs the ``manage`` scope (accounts.permissions.HasKeyScope, as every write). Someone else's key
    needs an owner or admin (403 ``role_forbidden``)."""

    def _key(self, request, key_id: int):
        # Scoped to the caller's team: another team's key id is simply not found.
        return api_key_get_visible(team=team_for_request(request), actor=actor_for_request(request), key_id=key_id)

    @extend_schema(responses=ApiKeySerializer)
    def get(self, request, key_id: int):
        return Response(ApiKeySerializer(self._key(request, key_id)).data)

    @extend_schema(responses={200: ApiKeySerializer})
    def delete(self, request, key_id: int):
        key = services.api_key_revoke(key=self._key(request, key_id), actor=actor_for_request(request))
        return Response(ApiKeySerializer(key).data)


# --- The team: members and invitations ---------------------------------------------------------------
# Reads need the `read` scope, writes `manage` (HasKeyScope); who may do what is the acting user's role
# (accounts.roles), checked by the services: invitations and member changes need an owner or admin.

CONFLICT = OpenApiResponse(
    description="A state conflict: `last_owner`, `already_member`, `invitation_pending`, `invitation_closed`."
)


class TeamApi(APIView):
    """The team this request acts for (a session's current team, or the API key's team) and your role."""

    @extend_schema(responses=TeamSerializer)
    def get(self, request):
        team = team_for_request(request)
        actor = actor_for_request(request)
        role = team_role(team=team, user=actor) if actor else None
        return Response(TeamSerializer(team, context={"role": role}).data)


class TeamMemberListApi(generics.ListAPIView):
    """The team's members and their roles, owners first. Every member may read it."""

    serializer_class = MemberSerializer

    def get_queryset(self):
        return team_member_list(team=team_for_request(self.request))


class TeamMemberDetailApi(APIView):
    """One member. PATCH ``{"role": ...}`` changes their role (owners and admins; only owners make or
    unmake owners); DELETE removes them from the team and revokes the API keys they created (your own
    membership: you leave). The last owner can be neither demoted nor removed (409 ``last_owner``)."""

    def _member(self, request, member_id: int):
        return get_object_or_404(team_member_list(team=team_for_request(request)), pk=member_id)

    @extend_schema(responses=MemberSerializer)
    def get(self, request, member_id: int):
        return Response(MemberSerializer(self._member(request, member_id)).data)

    @extend_schema(request=MemberRoleSerializer, responses={200: MemberSerializer, 409: CONFLICT})
    def patch(self, request, member_id: int):
        payload = MemberRoleSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        membership = teams.membership_role_set(
            membership=self._member(request, member_id),
            role=payload.validated_data["role"],
            actor=actor_for_request(request),
        )
        return Response(MemberSerializer(membership).data)

    @extend_schema(responses={200: MemberRemovedSerializer, 409: CONFLICT})
    def delete(self, request, member_id: int):
        removed = teams.membership_remove(membership=self._member(request, member_id), actor=actor_for_request(request))
        body = MemberSerializer(removed.membership).data
        body["keys_revoked"] = removed.keys_revoked
        return Response(body)


class TeamInvitationListApi(generics.ListAPIView):
    """The team's invitations, newest first, with their status (pending, accepted, revoked, expired).
    POST ``{"email", "role"}`` invites: the address gets an email with a link that works for 7 days.
    Owners and admins only; only owners invite owners."""

    serializer_class = InvitationSerializer

    def get_queryset(self):
        return invitation_list_for(team=team_for_request(self.request), actor=actor_for_request(self.request))

    @extend_schema(request=InvitationCreateSerializer, responses={201: InvitationSerializer, 409: CONFLICT})
    def post(self, request):
        payload = InvitationCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        invitation = invitations.invitation_create(
            team=team_for_request(request),
            email=payload.validated_data["email"],
            role=payload.validated_data["role"],
            actor=actor_for_request(request),
        )
        return Response(InvitationSerializer(invitation).data, status=status.HTTP_201_CREATED)


class TeamInvitationDetailApi(APIView):
    """One invitation; DELETE revokes it (its link stops working). An accepted one answers 409
    ``invitation_closed``."""

    def _invitation(self, request, invitation_id: int):
        team_invitations = invitation_list_for(team=team_for_request(request), actor=actor_for_request(request))
        return get_object_or_404(team_invitations, pk=invitation_id)

    @extend_schema(responses=InvitationSerializer)
    def get(self, request, invitation_id: int):
        return Response(InvitationSerializer(self._invitation(request, invitation_id)).data)

    @extend_schema(responses={200: InvitationSerializer, 409: CONFLICT})
    def delete(self, request, invitation_id: int):
        invitation = invitations.invitation_revoke(
            invitation=self._invitation(request, invitation_id), actor=actor_for_request(request)
        )
        return Response(InvitationSerializer(invitation).data)
