"""URL map for the access tests: the project's routes, the user pages, and test endpoints."""
from django.urls import include, path

from exchange.urls import urlpatterns as project_urlpatterns

from . import views

urlpatterns = [
    path("", include("apps.accounts.urls_pages")),
    path("fapi/test/public", views.EchoPublicApi.as_view()),
    path("fapi/test/depth", views.DepthLikeApi.as_view()),
    path("fapi/test/keyed", views.EchoKeyedApi.as_view()),
    path("fapi/test/account", views.AccountReadApi.as_view()),
    path("fapi/test/order", views.OrderApi.as_view()),
    *project_urlpatterns,
]
