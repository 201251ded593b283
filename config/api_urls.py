"""The account REST API under /api/v1/, its OpenAPI schema and the offline Swagger UI."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts.api import ApiKeyDetailApi, ApiKeyListCreateApi
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
    path("", include("partners.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]
