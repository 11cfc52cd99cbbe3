"""Client API routes of this app, mounted under /fapi/ (exchange extensions, not Binance paths)."""
from django.urls import path

from . import apis

urlpatterns = [
    path("v1/risk/account", apis.RiskAccountApi.as_view(), name="fapi-risk-account"),
    path("v1/risk/options", apis.OptionsApi.as_view(), name="fapi-risk-options"),
]
