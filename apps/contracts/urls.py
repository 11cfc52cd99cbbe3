"""Client API routes of this app, mounted under /fapi/ (Binance USDⓈ-M paths)."""
from django.urls import path

from . import apis

urlpatterns = [
    path("v1/exchangeInfo", apis.ExchangeInfoApi.as_view(), name="fapi-exchange-info"),
]
