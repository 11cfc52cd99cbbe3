"""Index price: hand-computed weights, every drop reason, the cache and the hold."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import time_machine
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.marketdata.engine import DropReason, IndexCalculator, IndexStatus, VenueQuote

from .helpers import q

NOW = 1_000_000
WEIGHTS = {"A": Decimal(1), "B": Decimal(2), "C": Decimal(1)}


def calc(**kwargs) -> IndexCalculator:
    return IndexCalculator(WEIGHTS, **kwargs)


def reasons(result) -> dict[str, DropReason]:
    return {f"{d.quote.venue}@{d.quote.price}": d.reason for d in result.dropped}


def test_weighted_average_by_hand():
    # A: 1 x (1 + 500/1000) = 1.5; B: 2 x (1 + min(2, 3000/1000)) = 6; C: 1 x (1 + 1) = 2
    # index = (100*1.5 + 101*6 + 99*2) / 9.5 = 954 / 9.5 = 100.421052631578...
    result = calc().compute(
        "BTCUSDT", [q("A", 100, 500), q("B", 101, 3000), q("C", 99, 1000)], now=NOW
    )
    assert result.status is IndexStatus.FRESH
    assert [(u.quote.venue, u.weight) for u in result.used] == [
        ("A", Decimal("1.5")),
        ("B", Decimal("6")),
        ("C", Decimal("2")),
    ]
    assert result.price == Decimal("100.42105263")  # 8 places, half-even
    assert result.dropped == ()
    assert not result.alert


def test_volume_weight_cap_is_two():
    calculator = calc()
    assert calculator.weight_for(q("B", 1, 2000)) == Decimal(6)
    assert calculator.weight_for(q("B", 1, 50_000)) == Decimal(6)
    assert calculator.weight_for(q("B", 1, 0)) == Decimal(2)


def test_non_positive_price_and_negative_volume_are_dropped():
    result = calc().compute(
        "BTCUSDT", [q("A", 0), q("B", -5), q("C", 100, -1), q("C", 100, 0, ts=NOW - 1)], now=NOW
    )
    assert reasons(result) == {
        "A@0": DropReason.NON_POSITIVE_PRICE,
        "B@-5": DropReason.NON_POSITIVE_PRICE,
        "C@100": DropReason.NEGATIVE_VOLUME,
    }
    # A zero-volume quote is valid: weight = configured weight x 1.
    assert [(u.quote.venue, u.weight) for u in result.used] == [("C", Decimal(1))]
    assert result.price == Decimal("100.00000000")


def test_stale_quote_is_dropped_and_the_age_limit_is_inclusive():
    result = calc(max_age_ms=10_000).compute(
        "BTCUSDT", [q("A", 100, ts=NOW - 10_000), q("B", 200, ts=NOW - 10_001)], now=NOW
    )
    assert [u.quote.venue for u in result.used] == ["A"]
    assert result.dropped[0].reason is DropReason.STALE
    assert "10001 ms" in result.dropped[0].detail


def test_deviation_from_last_index_applies_only_once_an_index_exists():
    quotes = [q("A", 100), q("B", 115)]
    first = calc().compute("BTCUSDT", quotes, now=NOW)
    assert len(first.used) == 2 and first.reference is None  # no reference yet

    calculator = calc()
    calculator.seed("BTCUSDT", Decimal(100), at=NOW - 60_000)
    result = calculator.compute(
        "BTCUSDT", [q("A", 110), q("B", Decimal("110.01")), q("C", Decimal("89.99"))], now=NOW
    )
    # exactly 10% is kept, anything beyond is dropped
    assert [u.quote.venue for u in result.used] == ["A"]
    assert reasons(result) == {"B@110.01": DropReason.DEVIATION, "C@89.99": DropReason.DEVIATION}
    assert result.reference == Decimal(100)


def test_unknown_venue_wrong_symbol_future_and_superseded():
    result = calc(max_future_ms=1000).compute(
        "BTCUSDT",
        [
            q("Z", 100),
            q("A", 100, symbol="ETHUSDT"),
            q("B", 100, ts=NOW + 1001),
            q("C", 99, ts=NOW - 500),
            q("C", 101, ts=NOW - 100),
        ],
        now=NOW,
    )
    assert reasons(result) == {
        "Z@100": DropReason.UNKNOWN_VENUE,
        "A@100": DropReason.SYMBOL_MISMATCH,
        "B@100": DropReason.FUTURE_TIMESTAMP,
        "C@99": DropReason.SUPERSEDED,
    }
    assert [(u.quote.venue, u.quote.price) for u in result.used] == [("C", Decimal(101))]


def test_cache_returns_the_same_result_within_five_seconds_unless_forced():
    calculator = calc()
    first = calculator.compute("BTCUSDT", [q("A", 100)], now=NOW)
    again = calculator.compute("BTCUSDT", [q("A", 104, ts=NOW + 4000)], now=NOW + 4999)
    assert again.cached and again.price == first.price == Decimal("100.00000000")
    assert again.computed_at == NOW

    forced = calculator.compute("BTCUSDT", [q("A", 104, ts=NOW + 4000)], now=NOW + 4999, force=True)
    assert not forced.cached and forced.price == Decimal("104.00000000")

    expired = calculator.compute("BTCUSDT", [q("A", 103, ts=NOW + 9000)], now=NOW + 4999 + 5000)
    assert not expired.cached and expired.price == Decimal("103.00000000")


def test_hold_last_value_when_no_quote_is_valid_then_recover():
    calculator = calc(cache_ms=0)
    calculator.compute("BTCUSDT", [q("A", 100)], now=NOW)
    held = calculator.compute("BTCUSDT", [q("A", 100, ts=NOW), q("B", 0, ts=NOW + 20_000)], now=NOW + 20_000)
    assert held.status is IndexStatus.HELD
    assert held.price == Decimal("100.00000000")
    assert held.alert and held.used == ()
    assert held.held_since == NOW + 20_000
    assert held.reason == "no valid quote (non_positive_price: 1, stale: 1)"

    still = calculator.compute("BTCUSDT", [], now=NOW + 21_000)
    assert still.status is IndexStatus.HELD and still.held_since == NOW + 20_000
    assert still.reason == "no valid quote (no quotes)"

    back = calculator.compute("BTCUSDT", [q("A", 101, ts=NOW + 22_000)], now=NOW + 22_000)
    assert back.status is IndexStatus.FRESH and back.price == Decimal("101.00000000")
    assert back.held_since is None


def test_held_result_is_not_cached():
    calculator = calc()  # 5 s cache
    calculator.compute("BTCUSDT", [q("A", 100)], now=NOW)
    calculator.compute("BTCUSDT", [], now=NOW + 6000)  # held
    recovered = calculator.compute("BTCUSDT", [q("A", 102, ts=NOW + 6500)], now=NOW + 6500)
    assert recovered.status is IndexStatus.FRESH and not recovered.cached


def test_unavailable_without_any_previous_index():
    result = calc().compute("BTCUSDT", [q("A", -1)], now=NOW)
    assert result.status is IndexStatus.UNAVAILABLE
    assert result.price is None and result.alert


def test_min_sources_holds_when_too_few_venues_are_valid():
    calculator = calc(min_sources=2)
    calculator.seed("BTCUSDT", Decimal(100), at=NOW - 1)
    result = calculator.compute("BTCUSDT", [q("A", 100), q("B", 0)], now=NOW)
    assert result.status is IndexStatus.HELD
    assert reasons(result)["A@100"] is DropReason.TOO_FEW_SOURCES
    assert "fewer than 2 valid sources" in result.reason


def test_reset_reference_lets_a_real_gap_through():
    calculator = calc(cache_ms=0)
    calculator.compute("BTCUSDT", [q("A", 100)], now=NOW)
    gapped = [q("A", 80, ts=NOW + 1000)]  # one venue alone cannot show a real move
    assert calculator.compute("BTCUSDT", gapped, now=NOW + 1000).status is IndexStatus.HELD
    calculator.reset_reference("BTCUSDT")
    assert calculator.compute("BTCUSDT", gapped, now=NOW + 1000).price == Decimal("80.00000000")


def test_a_gap_every_valid_venue_agrees_on_moves_the_index():
    """All valid quotes 20% away, two venues within the limit of their median: a real move."""
    calculator = calc(cache_ms=0)
    calculator.compute("BTCUSDT", [q("A", 100)], now=NOW)
    gapped = [q("A", 80, ts=NOW + 1000), q("B", 81, ts=NOW + 1000)]
    result = calculator.compute("BTCUSDT", gapped, now=NOW + 1000)
    # Weighted by venue (A 1, B 2; same volumes): (80 + 2 × 81) / 3.
    assert (result.status, result.price, result.dropped) == (IndexStatus.FRESH, Decimal("80.66666667"), ())
    # Venues that disagree among themselves beyond the limit: no move, the index holds.
    split = [q("A", 70, ts=NOW + 2000), q("B", 90, ts=NOW + 2000)]
    calculator.compute("BTCUSDT", [q("A", 100, ts=NOW + 1500)], now=NOW + 1500)
    assert calculator.compute("BTCUSDT", split, now=NOW + 2000).status is IndexStatus.HELD


def test_audit_record_is_json_ready():
    result = calc().compute("BTCUSDT", [q("A", 100, bid=Decimal("99.9"), ask=Decimal("100.1")), q("Z", 1)], now=NOW)
    audit = json.loads(json.dumps(result.to_audit()))
    assert audit["price"] == "100.00000000"
    assert audit["used"][0]["weight"] == "2"  # 1 x (1 + 1000/1000)
    assert audit["used"][0]["bid"] == "99.9"
    assert audit["dropped"][0]["reason"] == "unknown_venue"


def test_aware_datetimes_are_accepted_and_naive_ones_refused():
    at = datetime(2024, 6, 1, tzinfo=timezone.utc)
    ms = 1_717_200_000_000
    result = calc().compute("BTCUSDT", [q("A", 100, ts=ms)], now=at)
    assert result.computed_at == ms and result.is_fresh
    with pytest.raises(ValueError, match="naive"):
        calc().compute("BTCUSDT", [], now=datetime(2024, 6, 1))


def test_float_prices_are_refused_at_the_boundary():
    with pytest.raises(TypeError, match="float"):
        VenueQuote("A", "BTCUSDT", 100.5, Decimal(1), None, None, NOW)  # type: ignore[arg-type]


def test_no_wall_clock_is_read():
    quotes = [q("A", 100, 500), q("B", 101, 3000)]
    with time_machine.travel(datetime(2001, 1, 1, tzinfo=timezone.utc), tick=False):
        early = calc().compute("BTCUSDT", quotes, now=NOW)
    with time_machine.travel(datetime(2031, 1, 1, tzinfo=timezone.utc), tick=False):
        late = calc().compute("BTCUSDT", quotes, now=NOW)
    assert early == late


prices = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1000000"), places=8)
volumes = st.decimals(min_value=Decimal(0), max_value=Decimal(100_000), places=3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), prices, volumes), min_size=1, max_size=6),
    st.one_of(st.none(), prices),
)
def test_index_lies_within_the_used_quotes(rows, reference):
    calculator = calc()
    if reference is not None:
        calculator.seed("BTCUSDT", reference, at=NOW - 1)
    quotes = [q(v, p, vol, ts=NOW - i) for i, (v, p, vol) in enumerate(rows)]
    result = calculator.compute("BTCUSDT", quotes, now=NOW)
    if not result.used:
        assert result.status is IndexStatus.HELD
        return
    used = [u.quote.price for u in result.used]
    assert min(used) <= result.price <= max(used)
    assert len(result.used) + len(result.dropped) == len(quotes)
