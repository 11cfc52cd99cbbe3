"""URL map: client API (Binance-compatible paths), ops pages, admin, health, metrics, schema."""
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from apps.ops import views as ops_views

admin.site.site_header = "Futures exchange — operations"
admin.site.site_title = "Exchange ops"
admin.site.index_title = "Back office"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("ops/", include("apps.ops.urls")),
    path("", include("apps.accounts.urls_pages")),  # /account/api-keys/
    # Client API (Binance USDⓈ-M paths); each app mounts its own endpoints here.
    path("fapi/", include("apps.marketdata.urls")),
    path("fapi/", include("apps.contracts.urls")),
    path("fapi/", include("apps.accounts.urls")),
    path("fapi/", include("apps.trading.urls")),
    path("fapi/", include("apps.trading.public_urls")),
    path("fapi/", include("apps.positions.urls")),
    path("fapi/", include("apps.settlement.urls")),
    path("fapi/", include("apps.risk.urls")),
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="openapi-schema"),
    path("metrics", ops_views.metrics, name="prometheus-django-metrics"),
    path("", ops_views.home, name="home"),
]
