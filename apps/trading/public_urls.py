"""Public market-data routes of the trading app (book, trades, klines, tickers), mounted under /fapi/ (Binance USDⓈ-M paths)."""
urlpatterns: list = []
