"""Delivery settlement price: a hand example with an outlier minute, and no-price cases."""
from __future__ import annotations

import json
from decimal import Decimal

from apps.marketdata.engine import SettlementPriceCalculator, SettlementStatus

from .helpers import q

END = 1_717_228_800_000  # 2024-06-01T08:00:00Z, delivery
MIN = 60_000
START = END - 3 * MIN
WEIGHTS = {"A": 1, "B": 2, "C": 1}


def at(minute: int, second: int = 0) -> int:
    return START + minute * MIN + second * 1000


def hand_quotes():
    return [
        # minute 0: median 100, all kept; weights w x v: A 10, B 20, C 20
        #   (100*10 + 101*20 + 100*20) / 50 = 100.4
        q("A", 100, 10, ts=at(0, 5)),
        q("B", 101, 10, ts=at(0, 20)),
        q("C", 100, 20, ts=START),  # the window start is included
        # minute 1, the outlier minute: median 102, C at 120 is 17.6% off -> dropped;
        #   kept A (10), B (10) -> 102. Without cleaning: (1020 + 1020 + 12000) / 120 = 117.
        q("A", 102, 10, ts=at(1, 1)),
        q("B", 102, 5, ts=at(1, 30)),
        q("C", 120, 100, ts=at(1, 59)),
        # minute 2: median (101 + 103) / 2 = 102, both kept; A has no volume (weight 0)
        #   -> 103. Z is not a configured source.
        q("A", 101, 0, ts=at(2, 10)),
        q("B", 103, 10, ts=at(2, 40)),
        q("Z", 50, 1000, ts=at(2, 41)),
        # ignored: at the end instant (next window), before the start, other symbol
        q("A", 500, 10, ts=END),
        q("A", 500, 10, ts=START - 1),
        q("A", 500, 10, ts=at(1, 2), symbol="ETHUSDT"),
    ]


def test_hand_example_with_an_outlier_minute():
    calc = SettlementPriceCalculator(WEIGHTS, window_ms=3 * MIN, tick=Decimal("0.1"))
    result = calc.calculate("BTCUSDT", hand_quotes(), end=END)
    assert result.status is SettlementStatus.OK
    assert [m.value for m in result.minutes] == [Decimal("100.4"), Decimal(102), Decimal(103)]
    # (100.4 + 102 + 103) / 3 = 101.8
    assert result.unrounded == Decimal("101.8")
    assert result.price == Decimal("101.8")
    assert (result.window_start, result.window_end) == (START, END)

    outlier_minute = result.minutes[1]
    assert outlier_minute.median == Decimal(102)
    assert [(d.quote.venue, d.reason) for d in outlier_minute.dropped] == [("C", "outlier")]
    assert [(k.venue, w) for k, w in outlier_minute.kept] == [("A", Decimal(10)), ("B", Decimal(10))]
    assert [(d.quote.venue, d.reason) for d in result.minutes[2].dropped] == [("Z", "unknown_venue")]

    audit = json.loads(json.dumps(result.to_audit()))
    assert audit["price"] == "101.8" and audit["valid_minutes"] == 3
    assert audit["minutes"][1]["dropped"][0]["reason"] == "outlier"


def test_price_is_rounded_half_even_to_eight_places_without_a_tick():
    calc = SettlementPriceCalculator({"A": 1}, window_ms=3 * MIN)
    quotes = [q("A", 100, 1, ts=at(0)), q("A", 100, 1, ts=at(1)), q("A", 101, 1, ts=at(2))]
    result = calc.calculate("BTCUSDT", quotes, end=END)
    assert result.price == Decimal("100.33333333")  # 301 / 3


def test_an_empty_minute_does_not_count():
    calc = SettlementPriceCalculator({"A": 1}, window_ms=3 * MIN)
    result = calc.calculate("BTCUSDT", [q("A", 100, 1, ts=at(0)), q("A", 106, 1, ts=at(2))], end=END)
    assert result.price == Decimal("103.00000000")
    assert result.valid_minutes == 2 and result.minutes[1].reason == "no sample"


def test_no_sample_is_a_clear_no_price_result():
    calc = SettlementPriceCalculator(WEIGHTS)  # one hour by default
    result = calc.calculate("BTCUSDT", [], end=END)
    assert result.status is SettlementStatus.NO_PRICE
    assert result.price is None and result.unrounded is None
    assert result.reason == "no valid sample in the window"
    assert len(result.minutes) == 60 and result.window_start == END - 3_600_000


def test_only_invalid_samples_is_no_price():
    calc = SettlementPriceCalculator(WEIGHTS, window_ms=2 * MIN)
    quotes = [q("A", 0, 10, ts=END - 1000), q("B", 100, -1, ts=END - 2000), q("C", 100, 0, ts=END - 3000)]
    result = calc.calculate("BTCUSDT", quotes, end=END)
    assert result.status is SettlementStatus.NO_PRICE
    assert result.minutes[1].reason == "kept samples have zero volume"
    assert {d.reason for d in result.minutes[1].dropped} == {"non_positive_price", "negative_volume"}


def test_minimum_valid_minutes():
    calc = SettlementPriceCalculator({"A": 1}, window_ms=3 * MIN, min_valid_minutes=2)
    result = calc.calculate("BTCUSDT", [q("A", 100, 1, ts=at(0))], end=END)
    assert result.status is SettlementStatus.NO_PRICE
    assert result.reason == "1 valid minute(s), 2 required"


def test_window_is_a_parameter_per_call():
    calc = SettlementPriceCalculator({"A": 1})
    quotes = [q("A", 100, 1, ts=END - 45 * MIN), q("A", 200, 1, ts=END - 10 * MIN)]
    assert calc.calculate("BTCUSDT", quotes, end=END).price == Decimal("150.00000000")
    assert calc.calculate("BTCUSDT", quotes, end=END, window_ms=30 * MIN).price == Decimal("200.00000000")
