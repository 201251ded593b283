from django.contrib import admin
from django.urls import include, path

from config.health import healthz
from usage.urls_model_api import compat_urlpatterns, native_urlpatterns

admin.site.site_header = "TierLab operations"
admin.site.site_title = "TierLab admin"
admin.site.index_title = "Tiers, customers and billing"

urlpatterns = [
    path("admin/analytics/", include("partners.admin_analytics")),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("healthz", healthz, name="healthz"),
    path("v1/", include(native_urlpatterns)),
    path("compat/v1/", include(compat_urlpatterns)),
    path("", include("config.api_urls")),
    path("", include("tiers.urls")),
    path("", include("billing.urls")),
    path("", include("usage.urls")),
    path("", include("accounts.urls")),
]
