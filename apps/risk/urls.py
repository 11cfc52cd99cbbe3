"""Client API routes of this app, mounted under /fapi/ (Binance USDⓈ-M paths)."""
urlpatterns: list = []
