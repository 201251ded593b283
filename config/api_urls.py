"""The account REST API under /api/v1/, its OpenAPI schema and the offline Swagger UI."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts.api import (
    ApiKeyDetailApi,
    ApiKeyListCreateApi,
    TeamApi,
    TeamInvitationDetailApi,
    TeamInvitationListApi,
    TeamMemberDetailApi,
    TeamMemberListApi,
)
from billing.api import InvoiceDetailApi, InvoiceListApi, SubscriptionApi
from tiers.api import MeApi, SpendCapApi, TierListApi
from usage.api import UsageApi

urlpatterns = [
    path("api/v1/me", MeApi.as_view(), name="api-me"),
    path("api/v1/tiers", TierListApi.as_view(), name="api-tiers"),
    path("api/v1/subscription", SubscriptionApi.as_view(), name="api-subscription"),
    path("api/v1/subscription/spend-cap", SpendCapApi.as_view(), name="api-spend-cap"),
    path("api/v1/invoices", InvoiceListApi.as_view(), name="api-invoices"),
    path("api/v1/invoices/<str:number>", InvoiceDetailApi.as_view(), name="api-invoice"),
    path("api/v1/keys", ApiKeyListCreateApi.as_view(), name="api-keys"),
    path("api/v1/keys/<int:key_id>", ApiKeyDetailApi.as_view(), name="api-key"),
    path("api/v1/usage", UsageApi.as_view(), name="api-usage"),
    path("api/v1/team", TeamApi.as_view(), name="api-team"),
    path("api/v1/team/members", TeamMemberListApi.as_view(), name="api-team-members"),
    path("api/v1/team/members/<int:member_id>", TeamMemberDetailApi.as_view(), name="api-team-member"),
    path("api/v1/team/invitations", TeamInvitationListApi.as_view(), name="api-team-invitations"),
    path("api/v1/team/invitations/<int:invitation_id>", TeamInvitationDetailApi.as_view(), name="api-team-invitation"),
    path("", include("partners.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]
