from django.urls import path

from . import apis

urlpatterns = [
    path("v1/ping", apis.PingApi.as_view(), name="fapi-ping"),
    path("v1/time", apis.ServerTimeApi.as_view(), name="fapi-time"),
    path("v1/premiumIndex", apis.PremiumIndexApi.as_view(), name="fapi-premium-index"),
]
