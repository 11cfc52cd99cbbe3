"""Signed order endpoints, mounted under /fapi/ (Binance USDⓈ-M paths)."""
from django.urls import path

from . import apis

urlpatterns = [
    path("v1/order", apis.OrderApi.as_view(), name="fapi-order"),
    path("v1/batchOrders", apis.BatchOrdersApi.as_view(), name="fapi-batch-orders"),
    path("v1/allOpenOrders", apis.AllOpenOrdersApi.as_view(), name="fapi-all-open-orders"),
    path("v1/openOrders", apis.OpenOrdersApi.as_view(), name="fapi-open-orders"),
    path("v1/openOrder", apis.OpenOrderApi.as_view(), name="fapi-open-order"),
    path("v1/allOrders", apis.AllOrdersApi.as_view(), name="fapi-all-orders"),
    path("v1/userTrades", apis.UserTradesApi.as_view(), name="fapi-user-trades"),
]
