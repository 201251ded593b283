from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from config.health import healthz
from config.status import status_page
from usage.urls_model_api import compat_urlpatterns, native_urlpatterns


class FaviconRedirect(RedirectView):
    """Browsers ask for /favicon.ico whatever a page's <link rel="icon"> says: send them to the icon.
    Temporary (302): the static URL carries a content hash that changes with the file."""

    def get_redirect_url(self, *args, **kwargs) -> str:
        return static("img/favicon.svg")


admin.site.site_header = "TierLab operations"
admin.site.site_title = "TierLab admin"
admin.site.index_title = "Tiers, customers and billing"
# No app list beside every page: at 1280 px it took a fifth of the width, and the wide changelists
# (tiers, audit entries) hid columns behind a horizontal scroll. The index and breadcrumbs still navigate.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("admin/analytics/", include("partners.admin_analytics")),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("healthz", healthz, name="healthz"),
    path("status/", status_page, name="status"),
    # Browsers ask for /favicon.ico whatever the page's <link rel="icon"> says: send them to the icon.
    path("favicon.ico", FaviconRedirect.as_view()),
    path("v1/", include(native_urlpatterns)),
    path("compat/v1/", include(compat_urlpatterns)),
    path("", include("config.api_urls")),
    path("", include("tiers.urls")),
    path("", include("billing.urls")),
    path("", include("usage.urls")),
    path("", include("accounts.urls")),
]
