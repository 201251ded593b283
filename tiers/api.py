from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import generics
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.roles import team_role
from accounts.selectors import actor_for_request, team_for_request
from accounts.serializers import MeSerializer
from tiers import services
from tiers.selectors import subscription_current, tier_list_public
from tiers.serializers import (
    SpendCapSerializer,
    SpendCapStateSerializer,
    SubscriptionSerializer,
    TierSerializer,
)


class MeApi(APIView):
    """Who is calling: the user (for a session) and the team the request acts for, with its subscription
    and the caller's role in it (for an API key, its creator's; null for a key without one)."""

    @extend_schema(responses=MeSerializer)
    def get(self, request):
        team = team_for_request(request)
        subscription = subscription_current(team=team)
        user = request.user if isinstance(request.user, User) else None
        actor = actor_for_request(request)
        return Response(
            {
                "email": user.email if user else None,
                "team": {"id": team.pk, "slug": team.slug, "name": team.name},
                "role": team_role(team=team, user=actor) if actor else None,
                "subscription": SubscriptionSerializer(subscription).data if subscription else None,
            }
        )


class TierListApi(generics.ListAPIView):
    """The public tier catalog: prices (cents), limits (null = unlimited) and models."""

    permission_classes = [AllowAny]
    serializer_class = TierSerializer

    def get_queryset(self):
        return tier_list_public()


def _spend_cap_state(subscription) -> dict:
    return {
        "amount_cents": subscription.spend_cap_cents,
        "hard": subscription.spend_cap_hard,
        "currency": subscription.tier.currency,
        "available": subscription.tier.bills_overage,
        "fee_cents": subscription.tier.price_cents,
    }


class SpendCapApi(APIView):
    """The team's own monthly spend cap (tiers that bill overage only). PUT
    ``{"amount_cents": 5000, "hard": true}`` sets it, ``{"amount_cents": null}`` removes it. A tier
    without overage answers 409 ``spend_cap_not_available``; a cap below the tier fee 400
    ``spend_cap_below_fee``; a role that does not run billing 403 ``role_forbidden``; nothing changes on
    an error."""

    @extend_schema(responses=SpendCapStateSerializer)
    def get(self, request):
        subscription = subscription_current(team=team_for_request(request))
        if subscription is None:
            raise Http404("No subscription")
        return Response(SpendCapStateSerializer(_spend_cap_state(subscription)).data)

    @extend_schema(
        request=SpendCapSerializer,
        responses=SpendCapStateSerializer,
        examples=[
            OpenApiExample("Hard cap at $50", value={"amount_cents": 5000, "hard": True}),
            OpenApiExample("Email me at $80", value={"amount_cents": 8000, "hard": False}),
            OpenApiExample("No cap", value={"amount_cents": None}),
        ],
    )
    def put(self, request):
        payload = SpendCapSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        actor = actor_for_request(request)
        subscription = services.subscription_spend_cap_set(
            team=team_for_request(request),
            cap_cents=payload.validated_data["amount_cents"],
            hard=payload.validated_data["hard"],
            actor=actor,
        )
        return Response(SpendCapStateSerializer(_spend_cap_state(subscription)).data)
