"""price_publish / price_latest / price_history against real PostgreSQL and Redis."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.marketdata.models import PriceMinute, PriceSample, PriceStatus
from apps.marketdata.selectors import (
    funding_time_next,
    price_history,
    price_latest,
    price_latest_many,
    price_settlement_quotes,
)
from apps.marketdata.services import (
    MinuteInput,
    mark_listener_register,
    mark_listener_unregister,
    price_minute_record,
    price_minutes_record,
    price_publish,
)
from apps.marketdata.snapshot import PRICE_KEY, PriceSnapshot

D = Decimal
T0 = datetime(2026, 11, 25, 8, 0, 0, 250_000, tzinfo=timezone.utc)


def test_publish_then_latest_inside_a_transaction_reads_the_row(btcusdt, clean_redis):
    assert price_latest(contract=btcusdt) is None
    snap = price_publish(contract=btcusdt, index_price=D("90000.123456789"), mark_price=D("90012.26"), at=T0)
    # Mark to the 0.1 tick (half even), index to 8 places.
    assert snap == PriceSnapshot("BTCUSDT", D("90000.12345679"), D("90012.3"), T0)
    # Not committed: Redis untouched, the selector falls back to the stored sample.
    assert clean_redis.get(PRICE_KEY.format(symbol="BTCUSDT")) is None
    latest = price_latest(contract=btcusdt)
    assert (latest.index_price, latest.mark_price, latest.at) == (snap.index_price, snap.mark_price, T0.replace(microsecond=0))
    row = PriceSample.objects.get()
    assert row.basis == D("90012.3") - D("90000.12345679") and row.status == PriceStatus.FRESH


def test_same_second_replaces_the_sample(btcusdt, clean_redis):
    price_publish(contract=btcusdt, index_price=D("90000"), mark_price=D("90001"), at=T0)
    price_publish(contract=btcusdt, index_price=D("90002"), mark_price=D("90003"), at=T0 + timedelta(milliseconds=500))
    price_publish(contract=btcusdt, index_price=D("90004"), mark_price=D("90005"), at=T0 + timedelta(seconds=1))
    assert list(PriceSample.objects.order_by("at").values_list("mark_price", flat=True)) == [D("90003"), D("90005")]
    history = price_history(contract=btcusdt, start=T0 - timedelta(seconds=1), end=T0 + timedelta(seconds=2))
    assert [h.index_price for h in history] == [D("90002"), D("90004")]


@pytest.mark.django_db(transaction=True)
def test_after_commit_redis_holds_the_snapshot_and_listeners_run(btcusdt, ethusdt, clean_redis):
    seen = []

    def listener(contract, snapshot):
        seen.append((contract.symbol, snapshot.mark_price))

    mark_listener_register(listener)
    try:
        with transaction.atomic():
            price_publish(contract=btcusdt, index_price=D("90000"), mark_price=D("90010"), at=T0)
            assert seen == []
        assert seen == [("BTCUSDT", D("90010"))]
    finally:
        mark_listener_unregister(listener)
    raw = clean_redis.get(PRICE_KEY.format(symbol="BTCUSDT"))
    snap, contract_id = PriceSnapshot.from_json(raw)
    assert contract_id == btcusdt.pk and snap.at == T0 and snap.mark_price == D("90010")
    # The cache is what is read (the row is deleted, Redis still answers) ...
    PriceSample.objects.all().delete()
    many = price_latest_many(contracts=[btcusdt, ethusdt])
    assert many["BTCUSDT"].mark_price == D("90010") and many["ETHUSDT"] is None
    # ... and a key written for another contract id (another database) is ignored.
    clean_redis.set(PRICE_KEY.format(symbol="ETHUSDT"), PriceSnapshot("ETHUSDT", D(1), D(1), T0).to_json(contract_id=-5))
    assert price_latest(contract=ethusdt) is None


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"index_price": 90000.5}, TypeError),
        ({"mark_price": D("0")}, ValueError),
        ({"index_price": D("-1")}, ValueError),
        ({"mark_price": D("NaN")}, ValueError),
        ({"at": datetime(2026, 1, 1)}, ValueError),
        ({"status": "bogus"}, ValueError),
    ],
)
def test_bad_inputs_are_refused(btcusdt, kwargs, error):
    args = {"contract": btcusdt, "index_price": D("90000"), "mark_price": D("90000"), "at": T0} | kwargs
    with pytest.raises(error):
        price_publish(**args)
    assert not PriceSample.objects.exists()


def test_minute_records_merge_and_feed_the_settlement_quotes(btcusdt):
    minute = T0.replace(second=0, microsecond=0)
    price_minute_record(contract=btcusdt, minute=minute, index_price=D("90000"), mark_price=D("90001"),
                        venues={"binance": {"price": "90000", "volume": "1", "quotes": 2, "last_ts": 5}})
    # A restart mid-minute: the second part merges into the minute's VWAP.
    price_minute_record(contract=btcusdt, minute=minute + timedelta(seconds=30), index_price=D("90010"),
                        mark_price=D("90011"),
                        venues={"binance": {"price": "90030", "volume": "2", "quotes": 1, "last_ts": 9},
                                "okx": {"price": "90005", "volume": "3", "quotes": 1, "last_ts": 8}})
    quotes = price_settlement_quotes(contract=btcusdt, start=minute, end=minute + timedelta(minutes=1))
    assert [(q.venue, q.price, q.volume) for q in quotes] == [
        ("binance", D("90020"), D("3")),  # (90000*1 + 90030*2) / 3
        ("okx", D("90005"), D("3")),
    ]


def test_minutes_of_several_contracts_are_one_insert_and_a_stored_minute_is_merged(btcusdt, ethusdt):
    minute = T0.replace(second=0, microsecond=0)
    binance = {"binance": {"price": "90000", "volume": "1", "quotes": 2, "last_ts": 5}}
    price_minute_record(contract=btcusdt, minute=minute, index_price=D("90000"), mark_price=D("90001"),
                        venues=binance)
    later = minute + timedelta(minutes=1)
    with CaptureQueriesContext(connection) as queries:
        merged = price_minutes_record(minutes=[
            MinuteInput(contract=btcusdt, minute=later, index_price=D("90100"), mark_price=D("90100.04"),
                        venues={"okx": {"price": "90100", "volume": "2", "quotes": 1, "last_ts": 70}}),
            MinuteInput(contract=ethusdt, minute=later, index_price=D("3000"), mark_price=D("3000.006"),
                        venues={"okx": {"price": "3000", "volume": "4", "quotes": 3, "last_ts": 71}}),
        ])
    assert merged == 0 and len(queries) == 1
    stored = {(r.contract_id, r.minute): r for r in PriceMinute.objects.filter(minute=later)}
    assert stored[(btcusdt.pk, later)].mark_price == D("90100.0")  # to the contract's tick
    assert stored[(ethusdt.pk, later)].mark_price == D("3000.01")
    assert stored[(ethusdt.pk, later)].venues == {"okx": {"price": "3000", "volume": "4", "quotes": 3, "last_ts": 71}}
    # A minute already stored (a restart mid-minute) merges as price_minute_record does.
    merged = price_minutes_record(minutes=[
        MinuteInput(contract=btcusdt, minute=minute + timedelta(seconds=30), index_price=D("90010"),
                    mark_price=D("90011"), venues={"binance": {"price": "90030", "volume": "2", "quotes": 1,
                                                               "last_ts": 9}}),
    ])
    assert merged == 1
    row = PriceMinute.objects.get(contract=btcusdt, minute=minute)
    assert row.venues == {"binance": {"price": "90020.00000000", "volume": "3", "quotes": 3, "last_ts": 9}}
    assert (row.index_price, row.mark_price) == (D("90010"), D("90011"))


def test_next_funding_time_follows_the_8h_schedule(btcusdt):
    at = datetime(2026, 11, 25, 7, 59, 59, tzinfo=timezone.utc)
    assert funding_time_next(contract=btcusdt, now=at) == datetime(2026, 11, 25, 8, tzinfo=timezone.utc)
    at = datetime(2026, 11, 25, 16, 0, tzinfo=timezone.utc)
    assert funding_time_next(contract=btcusdt, now=at) == datetime(2026, 11, 26, 0, tzinfo=timezone.utc)
