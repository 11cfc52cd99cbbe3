"""Kline streams `<symbol>@kline_<interval>`: names, the candle, and pushes through the relay.

The relay seeds a symbol's open candles from the trades table on its first event and
then counts the trades of each event once. Time is travelled (time-machine) to a
few seconds into a minute so the trades of a test share their 1m candle.
"""
import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import time_machine
from asgiref.sync import sync_to_async

from apps.marketdata.streams import Candle, InvalidStream, kline_open_ms, parse_stream
from apps.trading.engine import SymbolEngine
from apps.trading.matching import EVENTS_CHANNEL, batch_process
from apps.trading.models import Trade
from apps.trading.public_selectors import klines_list
from apps.trading.services import order_place
from exchange.redis import get_redis
from tests.marketdata.test_streams import RelayRunning, connect, run

D = Decimal
SYMBOLS = frozenset({"BTCUSDT"})
T0 = datetime(2026, 11, 25, 9, 0, 5, tzinfo=timezone.utc)
MINUTE_MS = int(datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc).timestamp() * 1000)
HOUR_MS = MINUTE_MS


@pytest.mark.parametrize("name, interval", [("btcusdt@kline_1m", "1m"), ("BTCUSDT@kline_12h", "12h"),
                                            ("btcusdt@kline_1d", "1d"), ("btcusdt@kline_15m", "15m")])
def test_kline_names(name, interval):
    stream = parse_stream(name, symbols=SYMBOLS)
    assert (stream.kind, stream.symbol, stream.interval) == ("kline", "BTCUSDT", interval)
    assert stream.group == f"md.kline.BTCUSDT.{interval}"


@pytest.mark.parametrize("name", ["btcusdt@kline_2m", "btcusdt@kline_1w", "btcusdt@kline_", "btcusdt@kline_1M",
                                  "ethusdt@kline_1m", "btcusdt@kline1m"])
def test_bad_kline_names(name):
    with pytest.raises(InvalidStream):
        parse_stream(name, symbols=SYMBOLS)


def test_candle_counts_each_trade_once_and_shapes_the_payload():
    opens = kline_open_ms("5m", 1_700_000_123_456)
    assert opens == 1_700_000_100_000 and opens % 300_000 == 0
    candle = Candle("5m", opens)
    candle.seed(first_id=10, last_id=12, open=D("100"), high=D("101"), low=D("99"), close=D("100.5"),
                volume=D("3"), quote=D("300.5"), count=3, buy_volume=D("1"), buy_quote=D("101"))
    assert not candle.add(trade_id=12, price=D("200"), qty=D("1"), quote=D("200"), taker_buy=True)  # seen
    assert candle.add(trade_id=13, price=D("98.5"), qty=D("0.5"), quote=D("49.25"), taker_buy=False)
    assert candle.add(trade_id=14, price=D("102"), qty=D("0.25"), quote=D("25.5"), taker_buy=True)
    assert candle.payload(symbol="BTCUSDT", event_ms=7) == {
        "e": "kline", "E": 7, "s": "BTCUSDT",
        "k": {"t": opens, "T": opens + 299_999, "s": "BTCUSDT", "i": "5m", "f": 10, "L": 14, "o": "100",
              "c": "102", "h": "102", "l": "98.5", "v": "3.75", "n": 5, "x": False, "q": "375.25", "V": "1.25",
              "Q": "126.5", "B": "0"},
    }
    candle.closed = True
    assert not candle.add(trade_id=15, price=D("1"), qty=D("1"), quote=D("1"), taker_buy=True)
    assert candle.payload(symbol="BTCUSDT", event_ms=8)["k"]["x"] is True


async def frame(ws) -> dict:
    return json.loads(await ws.receive_from(timeout=10))


@pytest.mark.django_db(transaction=True)
def test_kline_seeded_from_trades_then_updated_rolled_and_closed(funded, btcusdt, clean_redis):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    redis = get_redis()

    with time_machine.travel(T0, tick=True):
        for price in ("50000", "50010", "50020"):
            order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D(price))
        batch_process(engine)
        # Two fills before the relay runs: only the trades table knows them.
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50010"))
        batch_process(engine)
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.08"), price=D("50010"))
        batch_process(engine)

        async def body():
            async with RelayRunning() as relay:
                minute = await connect("/ws/btcusdt@kline_1m")
                hour = await connect("/stream?streams=btcusdt@kline_1h")
                order = await sync_to_async(order_place)(user=alice, contract=btcusdt, side="SELL",
                                                         quantity=D("0.05"), price=D("50000"))
                await sync_to_async(batch_process)(engine)  # the taker sells 0.05 to nobody: rests
                await sync_to_async(order_place)(user=bob, contract=btcusdt, side="BUY", quantity=D("0.05"),
                                                 price=D("50000"))
                await sync_to_async(batch_process)(engine)  # bob's buy fills alice's resting sell
                trades = await sync_to_async(lambda: list(Trade.objects.order_by("id")))()
                assert len(trades) == 3 and trades[-1].maker_order_id == order.pk

                k = (await frame(minute))["k"]
                assert (k["t"], k["T"], k["s"], k["i"], k["x"]) == (MINUTE_MS, MINUTE_MS + 59_999, "BTCUSDT", "1m", False)
                assert (k["f"], k["L"], k["n"]) == (trades[0].pk, trades[-1].pk, 3)
                # 0.1 @ 50000 and 0.08 @ 50010 taken by buyers, then 0.05 @ 50000 bought by bob.
                assert (k["o"], k["h"], k["l"], k["c"]) == ("50000", "50010", "50000", "50000")
                assert (k["v"], k["q"], k["V"], k["Q"]) == ("0.23", "11500.8", "0.23", "11500.8")
                # The same numbers as the REST klines of that minute.
                (rest,) = (await sync_to_async(klines_list)(symbol="BTCUSDT", interval="1m", limit=1)).klines
                assert (rest.open_time, rest.count, rest.volume, rest.quote_volume) == (
                    MINUTE_MS, 3, D(k["v"]), D(k["q"]))
                wrapped = await frame(hour)
                assert wrapped["stream"] == "btcusdt@kline_1h"
                assert (wrapped["data"]["k"]["t"], wrapped["data"]["k"]["n"]) == (HOUR_MS, 3)

                # A trade of the next minute: the 1m candle goes final, a new one opens; 1h carries on.
                nxt = trades[-1].pk + 1000
                await sync_to_async(redis.publish)(EVENTS_CHANNEL.format(symbol="BTCUSDT"), json.dumps({
                    "symbol": "BTCUSDT", "time": MINUTE_MS + 60_500, "last_seq": 10**6, "orders": [],
                    "trades": [{"id": nxt, "price": "50100.5", "qty": "0.01", "taker_side": "SELL",
                                "taker_order_id": 1, "maker_order_id": 2, "time": MINUTE_MS + 60_500},
                               {"id": trades[0].pk, "price": "1", "qty": "9", "taker_side": "SELL",  # counted already
                                "taker_order_id": 1, "maker_order_id": 2, "time": MINUTE_MS + 1000}],
                }))
                final, opened = (await frame(minute))["k"], (await frame(minute))["k"]
                assert (final["t"], final["x"], final["n"], final["c"]) == (MINUTE_MS, True, 3, "50000")
                assert (opened["t"], opened["x"], opened["f"], opened["L"], opened["n"]) == (
                    MINUTE_MS + 60_000, False, nxt, nxt, 1)
                assert (opened["o"], opened["v"], opened["V"], opened["q"]) == ("50100.5", "0.01", "0", "501.005")
                hourly = (await frame(hour))["data"]["k"]
                assert (hourly["n"], hourly["h"], hourly["c"], hourly["x"]) == (4, "50100.5", "50100.5", False)

                # Past its end (and the grace), the open 1m candle is pushed final without a trade.
                await relay.klines_close_due(now_ms=MINUTE_MS + 120_000 + 5_000)
                closed = (await frame(minute))["k"]
                assert (closed["t"], closed["x"], closed["n"]) == (MINUTE_MS + 60_000, True, 1)
                assert relay.candles["BTCUSDT"]["1h"].closed is False
                await minute.disconnect()
                await hour.disconnect()

        run(body)
