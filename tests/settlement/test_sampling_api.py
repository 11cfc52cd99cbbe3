"""Premium sampling (seed and impact policy, the impact-price query over the book), the
predicted rate in premiumIndex and the markPrice stream, and the public endpoints."""
import asyncio
import json
from datetime import timedelta
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
import time_machine
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from apps.contracts.models import FundingPolicy
from apps.marketdata.engine.quotes import to_ms
from apps.marketdata.relay import StreamRelay
from apps.marketdata.services import price_publish
from apps.settlement.models import FundingRate, PremiumSample
from apps.settlement.selectors import PREDICTED_KEY, funding_predicted, impact_prices
from apps.settlement.services import premium_samples_take
from apps.trading.models import Order, OrderStatus, Trade
from exchange.redis import get_redis

from .conftest import T8

D = Decimal
START = T8 - timedelta(hours=8)


@pytest.fixture
def order(make_user, btcusdt):
    owner = make_user("maker")
    counter = iter(range(1, 10_000))

    def make(side: str, price: str, qty: str, *, executed: str = "0", status=OrderStatus.NEW, rests: bool = True):
        n = next(counter)
        return Order.objects.create(user=owner, contract=btcusdt, client_order_id=f"o{n}", side=side,
                                    order_type="LIMIT", price=D(price), quantity=D(qty), executed_qty=D(executed),
                                    status=status, priority=n if rests else None)

    return make


def trade_at(order, btcusdt, price: str):
    buy, sell = order("BUY", price, "1", status=OrderStatus.FILLED, rests=False), \
        order("SELL", price, "1", status=OrderStatus.FILLED, rests=False)
    Trade.objects.create(contract=btcusdt, price=D(price), quantity=D("0.001"), taker_order=buy, maker_order=sell,
                         taker_side="BUY", command_seq=1)


@pytest.mark.django_db
def test_impact_prices_walk_the_book_in_one_query(btcusdt, order, django_assert_num_queries):
    order("BUY", "49990", "0.2")
    order("BUY", "49990", "0.3", executed="0.2")              # same level: 0.2 + 0.1 open
    order("BUY", "49980", "0.5", status=OrderStatus.PARTIALLY_FILLED)
    order("BUY", "49970", "9")                                # beyond the notional: not read
    order("BUY", "49995", "5", status=OrderStatus.PENDING_NEW)  # not resting: ignored
    order("BUY", "49999", "5", status=OrderStatus.CANCELED)
    order("BUY", "49998", "5", rests=False)                   # no priority (not on the book)
    order("SELL", "50010", "0.2")
    order("SELL", "50020", "1")
    with django_assert_num_queries(1):
        bid, ask = impact_prices(contract=btcusdt, notional=D("20000"))
    # Bid: 0.3 @ 49990 = 14,997; the remaining 5,003 at 49980 buys 5003/49980; average = 20000 / total qty.
    assert bid == (D(20000) / (D("0.3") + D(5003) / D(49980))).quantize(D("1E-12"))
    assert bid == D("49987.498124718708")  # hand check: 0.40010004 × 49987.5 ≈ 20000.0008, so just under
    # Ask: 0.2 @ 50010 = 10,002; 9,998 more at 50020.
    assert ask == (D(20000) / (D("0.2") + D(9998) / D(50020))).quantize(D("1E-12"))
    # Not enough on a side: None.
    assert impact_prices(contract=btcusdt, notional=D("100000"))[1] is None


@pytest.mark.django_db
def test_seed_sampler_stores_slot_and_premium_and_caches_the_predicted_rate(btcusdt, order):
    trade_at(order, btcusdt, "50100")
    with time_machine.travel(START + timedelta(seconds=12), tick=False):  # slot 3 (0-4 s: 1, 5-9: 2, 10-14: 3)
        price_publish(contract=btcusdt, index_price=D("49990"), mark_price=D("50000"), at=START + timedelta(seconds=11))
        assert premium_samples_take() == 1
        assert premium_samples_take() == 0 or PremiumSample.objects.count() == 1  # same slot: one row
    row = PremiumSample.objects.get()
    assert (row.funding_time, row.slot, row.policy) == (T8, 3, FundingPolicy.SEED)
    assert (row.contract_price, row.mark_price, row.premium) == (D("50100"), D("50000"), D("0.002"))
    assert row.impact_bid is None and row.index_price is None
    # One sample of 0.002 + 0.0001 interest.
    with time_machine.travel(START + timedelta(seconds=13), tick=False):
        assert funding_predicted(contract=btcusdt).rate == D("0.0021")


@pytest.mark.django_db
def test_impact_sampler_uses_impact_prices_against_the_index(btcusdt, order):
    btcusdt.funding_policy = FundingPolicy.IMPACT
    btcusdt.impact_notional = D("5000")
    btcusdt.save(update_fields=["funding_policy", "impact_notional"])
    order("BUY", "50010", "1")
    order("SELL", "50020", "1")
    with time_machine.travel(START + timedelta(minutes=1), tick=False):
        price_publish(contract=btcusdt, index_price=D("50000"), mark_price=D("50005"), at=START + timedelta(minutes=1))
        premium_samples_take()
    row = PremiumSample.objects.get()
    # (max(0, 50010 − 50000) − max(0, 50000 − 50020)) / 50000 = 0.0002
    assert (row.impact_bid, row.impact_ask, row.index_price, row.premium) == (D("50010"), D("50020"), D("50000"),
                                                                              D("0.0002"))
    assert row.slot == 13 and row.contract_price is None
    # P = 0.0002; I − P = −0.0001 within ±0.05%: rate = I = 0.0001.
    with time_machine.travel(START + timedelta(minutes=1, seconds=1), tick=False):
        assert funding_predicted(contract=btcusdt).rate == D("0.0001")


@pytest.mark.django_db
def test_no_sample_without_a_fresh_price_or_a_trade(btcusdt, order):
    with time_machine.travel(START + timedelta(minutes=5), tick=False):
        assert premium_samples_take() == 0  # no price at all
        price_publish(contract=btcusdt, index_price=D("50000"), mark_price=D("50000"), at=START)
        assert premium_samples_take() == 0  # price 5 minutes old: pricefeed down
        price_publish(contract=btcusdt, index_price=D("50000"), mark_price=D("50000"), at=START + timedelta(minutes=5))
        assert premium_samples_take() == 0  # no trade yet: no contract price
    assert not PremiumSample.objects.exists()


@pytest.mark.django_db
def test_premium_index_shows_the_predicted_rate(btcusdt, client, samples):
    samples(btcusdt, T8, ["0.0003"])
    with time_machine.travel(START + timedelta(hours=1), tick=False):
        price_publish(contract=btcusdt, index_price=D("50000"), mark_price=D("50000"), at=START + timedelta(hours=1))
        body = client.get("/fapi/v1/premiumIndex", {"symbol": "BTCUSDT"}).json()
    assert (body["lastFundingRate"], body["interestRate"], body["nextFundingTime"]) == (
        "0.00040000", "0.00010000", to_ms(T8))
    # The cached value (written by the sampler) wins while it is for the current interval.
    get_redis().set(PREDICTED_KEY.format(symbol="BTCUSDT"),
                    json.dumps({"c": btcusdt.pk, "r": "0.00031234", "T": to_ms(T8), "n": 7}))
    with time_machine.travel(START + timedelta(hours=1), tick=False):
        assert client.get("/fapi/v1/premiumIndex").json()[0]["lastFundingRate"] == "0.00031234"
    # A cached value of another interval is ignored.
    with time_machine.travel(T8 + timedelta(minutes=1), tick=False):
        assert client.get("/fapi/v1/premiumIndex").json()[0]["lastFundingRate"] == "0.00010000"


@pytest.mark.django_db(transaction=True)
def test_mark_price_stream_carries_r_and_t(btcusdt):
    sent = []
    T = to_ms(T8)

    async def body():
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            await client.set(PREDICTED_KEY.format(symbol="BTCUSDT"),
                             json.dumps({"c": btcusdt.pk, "r": "-0.00012345", "T": T, "n": 3}))
            relay = StreamRelay()
            await relay._prices([{"s": "BTCUSDT", "p": "50000", "i": "49990", "t": 1}], client)
            sent.extend(json.loads(body) for _, body in relay._outbox)  # queued for the next flush
        finally:
            await client.aclose()
            # The relay read the contracts in a worker thread: close that thread's connection.
            await sync_to_async(connections.close_all)()

    with time_machine.travel(START + timedelta(hours=2), tick=False):
        asyncio.run(body())
    update = sent[0]["data"]
    assert (update["r"], update["T"]) == ("-0.00012345", T)


# -- public endpoints ------------------------------------------------------------------------


@pytest.fixture
def history(btcusdt):
    rows = [FundingRate(contract=btcusdt, funding_time=START + timedelta(hours=8 * i), funding_rate=D(r),
                        mark_price=D("50000.5"), policy="SEED", premium_index=0, interest_rate=D("0.0001"))
            for i, r in enumerate(["0.0001", "-0.00025", "0.00075", "0.0003"])]
    FundingRate.objects.bulk_create(rows)
    return [to_ms(r.funding_time) for r in rows]


@pytest.mark.django_db
def test_funding_rate_history_endpoint(client, history):
    body = client.get("/fapi/v1/fundingRate", {"symbol": "BTCUSDT"}).json()
    assert body[1] == {"symbol": "BTCUSDT", "fundingRate": "-0.00025000", "fundingTime": history[1],
                       "markPrice": "50000.50000000"}
    assert [r["fundingTime"] for r in body] == history  # oldest first
    # No bounds: the most recent `limit`; a start: the first `limit` from it.
    assert [r["fundingTime"] for r in client.get("/fapi/v1/fundingRate", {"limit": 2}).json()] == history[2:]
    got = client.get("/fapi/v1/fundingRate", {"startTime": history[1], "limit": 2}).json()
    assert [r["fundingTime"] for r in got] == history[1:3]
    got = client.get("/fapi/v1/fundingRate", {"startTime": history[1], "endTime": history[2]}).json()
    assert [r["fundingRate"] for r in got] == ["-0.00025000", "0.00075000"]


@pytest.mark.django_db
@pytest.mark.parametrize("params, code", [
    ({"symbol": "NOPEUSDT"}, -1121),
    ({"limit": "0"}, -1130),
    ({"limit": "1001"}, -1130),
    ({"limit": "ten"}, -1130),
    ({"startTime": "-1"}, -1130),
    ({"startTime": "20", "endTime": "10"}, -1130),
    ({"startTime": str(2**64)}, -1130),
])
def test_funding_rate_history_refuses_bad_inputs(client, btcusdt, params, code):
    response = client.get("/fapi/v1/fundingRate", params)
    assert response.status_code == 400 and response.json()["code"] == code


@pytest.mark.django_db
def test_funding_info_lists_perpetuals(client, btcusdt, quarterly):
    assert client.get("/fapi/v1/fundingInfo").json() == [{
        "symbol": "BTCUSDT", "adjustedFundingRateCap": "0.00750000", "adjustedFundingRateFloor": "-0.00750000",
        "fundingIntervalHours": 8, "disclaimer": False}]
