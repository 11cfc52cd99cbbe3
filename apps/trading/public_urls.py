"""Public market-data routes of the trading app (book, trades, klines, tickers), mounted under /fapi/ (Binance USDⓈ-M paths)."""
from django.urls import path

from . import public_apis as apis

urlpatterns = [
    path("v1/depth", apis.DepthApi.as_view(), name="fapi-depth"),
    path("v1/trades", apis.TradesApi.as_view(), name="fapi-trades"),
    path("v1/historicalTrades", apis.HistoricalTradesApi.as_view(), name="fapi-historical-trades"),
    path("v1/aggTrades", apis.AggTradesApi.as_view(), name="fapi-agg-trades"),
    path("v1/klines", apis.KlinesApi.as_view(), name="fapi-klines"),
    path("v1/ticker/24hr", apis.Ticker24hrApi.as_view(), name="fapi-ticker-24hr"),
    path("v1/ticker/price", apis.TickerPriceApi.as_view(), name="fapi-ticker-price"),
    path("v2/ticker/price", apis.TickerPriceApi.as_view(), name="fapi-v2-ticker-price"),
    path("v1/ticker/bookTicker", apis.BookTickerApi.as_view(), name="fapi-book-ticker"),
    path("v1/openInterest", apis.OpenInterestApi.as_view(), name="fapi-open-interest"),
]
