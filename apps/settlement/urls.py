"""Client API routes of this app, mounted under /fapi/ (Binance USDⓈ-M paths)."""
from django.urls import path

from . import apis

urlpatterns = [
    path("v1/fundingRate", apis.FundingRateHistoryApi.as_view(), name="fapi-funding-rate"),
    path("v1/fundingInfo", apis.FundingInfoApi.as_view(), name="fapi-funding-info"),
]
