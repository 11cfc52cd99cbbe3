"""URL map for the access tests: this app's real routes (client API, user pages), the
admin, the schema, and test-only endpoints on the base classes. Only these, so the
tests do not depend on other apps' routes."""
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("apps.accounts.urls_pages")),
    path("fapi/", include("apps.accounts.urls")),
    path("fapi/test/public", views.EchoPublicApi.as_view()),
    path("fapi/test/depth", views.DepthLikeApi.as_view()),
    path("fapi/test/keyed", views.EchoKeyedApi.as_view()),
    path("fapi/test/account", views.AccountReadApi.as_view()),
    path("fapi/test/order", views.OrderApi.as_view()),
    path("api/schema/", SpectacularAPIView.as_view(), name="openapi-schema"),
]
