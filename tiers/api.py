from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import generics
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.selectors import team_for_request
from tiers import billing, services
from tiers.selectors import invoice_list_for_team, subscription_current, tier_list_public
from tiers.serializers import (
    InvoiceSerializer,
    SpendCapSerializer,
    SpendCapStateSerializer,
    SubscriptionChangeSerializer,
    SubscriptionRequestSerializer,
    SubscriptionSerializer,
    TierSerializer,
)


class TierListApi(generics.ListAPIView):
    """The public tier catalog: prices (cents), limits (null = unlimited) and models."""

    permission_classes = [AllowAny]
    serializer_class = TierSerializer

    def get_queryset(self):
        return tier_list_public()


class SubscriptionApi(APIView):
    """The team's subscription. POST subscribes or changes tier (an upgrade is charged the prorated
    difference now; a downgrade is scheduled for the period end), cancels at period end, or resumes.
    A declined card answers 402 (code ``card_declined``) and changes nothing."""

    @extend_schema(responses=SubscriptionSerializer)
    def get(self, request):
        subscription = subscription_current(team=team_for_request(request))
        if subscription is None:
            raise Http404("No subscription")
        return Response(SubscriptionSerializer(subscription).data)

    @extend_schema(
        request=SubscriptionRequestSerializer,
        responses=SubscriptionChangeSerializer,
        examples=[
            OpenApiExample("Subscribe or change tier", value={"tier": "pro", "payment_method": "pm_card_visa"}),
            OpenApiExample("Cancel at period end", value={"cancel": True}),
            OpenApiExample("Undo a scheduled cancel or downgrade", value={"resume": True}),
        ],
    )
    def post(self, request):
        payload = SubscriptionRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        team = team_for_request(request)
        actor = request.user if isinstance(request.user, User) else None
        if "tier" in data:
            result = billing.subscription_change(
                team=team, tier=data["tier"], payment_method=data.get("payment_method"), actor=actor
            )
        elif "cancel" in data:
            result = billing.subscription_cancel(team=team, actor=actor)
        else:
            result = billing.subscription_resume(team=team, actor=actor)
        body = SubscriptionSerializer(result.subscription).data
        body["change"] = result.change
        body["invoice"] = InvoiceSerializer(result.invoice).data if result.invoice is not None else None
        return Response(body)


def _team_invoices(request):
    return invoice_list_for_team(team=team_for_request(request)).prefetch_related("lines")


class InvoiceListApi(generics.ListAPIView):
    """The team's invoices, newest first, with their lines. Amounts are cents."""

    serializer_class = InvoiceSerializer

    def get_queryset(self):
        return _team_invoices(self.request)


class InvoiceDetailApi(generics.RetrieveAPIView):
    """One of the team's invoices, by number."""

    serializer_class = InvoiceSerializer
    lookup_field = "number"

    def get_queryset(self):
        return _team_invoices(self.request)


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
    ``spend_cap_below_fee``; nothing changes on an error."""

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
        actor = request.user if isinstance(request.user, User) else None
        subscription = services.subscription_spend_cap_set(
            team=team_for_request(request),
            cap_cents=payload.validated_data["amount_cents"],
            hard=payload.validated_data["hard"],
            actor=actor,
        )
        return Response(SpendCapStateSerializer(_spend_cap_state(subscription)).data)
