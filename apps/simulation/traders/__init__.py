"""Demo participants that trade through the exchange's client API, as outside clients do.

`manage.py run_demo_traders` (the Procfile's `traders` process) runs market makers,
takers and leveraged trend followers against a running exchange, so that a newcomer
who types `make run` sees a live book, trades, funding and now and then a
liquidation. Layout: `rules.py` (symbol filters from exchangeInfo), `strategies.py`
(pure decisions), `state.py` (what a client knows), `client.py` (signed REST with
backoff and a shared weight budget), `streams.py` (market and user data websockets),
`participants.py` (the trading loops), `provision.py` (users, wallets and API keys;
the demo faucet), `runner.py` (the process: start, supervise, stop on SIGTERM).
"""
