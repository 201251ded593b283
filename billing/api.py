"""The account API's billing endpoints: the subscription (subscribe, change tier, cancel, resume) and invoices."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import actor_for_request, team_for_request
from billing import checkout
from billing.selectors import invoice_list_for_team
from billing.serializers import InvoiceSerializer, SubscriptionChangeSerializer, SubscriptionRequestSerializer
from billing.services import billing_role_check
from tiers.selectors import subscription_current
from tiers.serializers import SubscriptionSerializer


class SubscriptionApi(APIView):
    """The team's subscription. POST subscribes or changes tier (an upgrade is charged the prorated
    difference now; a downgrade is scheduled for the period end), cancels at period end, or resumes.
    A declined card answers 402 (code ``card_declined``) and changes nothing. Every team member reads
    it (the dashboard shows the tier too); owners, admins and billing members change it."""

    @extend_schema(responses=SubscriptionSerializer)
    def get(self, request):
        subscription = subscription_current(team=team_for_request(request))
        if subscription is None:
            raise Http404("No subscription")
        return Response(SubscriptionSerializer(subscription).data)

    @extend_schema(
        request=SubscriptionRequestSerializer,
        responses={
            200: SubscriptionChangeSerializer,
            402: OpenApiResponse(description="`card_declined` or `payment_method_required`: nothing changed."),
            503: OpenApiResponse(
                description="`payment_provider_unavailable`: Stripe did not answer in time; try again later."
            ),
        },
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
        actor = actor_for_request(request)
        if "tier" in data:
            result = checkout.subscription_change(
                team=team, tier=data["tier"], payment_method=data.get("payment_method"), actor=actor
            )
        elif "cancel" in data:
            result = checkout.subscription_cancel(team=team, actor=actor)
        else:
            result = checkout.subscription_resume(team=team, actor=actor)
        body = SubscriptionSerializer(result.subscription).data
        body["change"] = result.change
        body["invoice"] = InvoiceSerializer(result.invoice).data if result.invoice is not None else None
        return Response(body)


def _team_invoices(request):
    team = team_for_request(request)
    billing_role_check(team=team, actor=actor_for_request(request), manage=False)
    return invoice_list_for_team(team=team).prefetch_related("lines")


class InvoiceListApi(generics.ListAPIView):
    """The team's invoices, newest first, with their lines. Amounts are cents. Owners, admins and
    billing members only."""

    serializer_class = InvoiceSerializer

    def get_queryset(self):
        return _team_invoices(self.request)


class InvoiceDetailApi(generics.RetrieveAPIView):
    """One of the team's invoices, by number."""

    serializer_class = InvoiceSerializer
    lookup_field = "number"

    def get_queryset(self):
        return _team_invoices(self.request)
