"""Mark price: basis weighting by hand, window edges, clamp, tick rule, fallback."""
from __future__ import annotations

from decimal import Context, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.marketdata.engine import (
    IndexCalculator,
    IndexStatus,
    MarkCalculator,
    MarkStatus,
    quantize_to_tick,
)
from apps.marketdata.engine.mark import decay_weight

from .helpers import q

T = 10_000_000
TICK = Decimal("0.1")
PRECISE = Context(prec=40)


def e(x: str) -> Decimal:
    return PRECISE.exp(Decimal(x))


def test_basis_is_weighted_by_exp_minus_age_over_300s():
    # basis 0 observed 300 s ago (weight e^-1), basis 10 observed now (weight 1):
    # average = 10 / (1 + e^-1) = 7.3105857863... ; mark = 1000 + 7.31 -> 1007.3
    mark = MarkCalculator(tick=TICK)
    mark.record_basis("BTCUSDT", contract_price=Decimal(1000), index_price=Decimal(1000), at=T - 300_000)
    result = mark.compute("BTCUSDT", index=Decimal(1000), contract_price=Decimal(1010), now=T)
    expected = PRECISE.divide(Decimal(10), 1 + e("-1"))
    assert abs(result.basis_average - expected) < Decimal("1e-25")
    assert result.observations == 2
    assert result.price == Decimal("1007.3")
    assert result.status is MarkStatus.FRESH and not result.clamped


def test_three_observations_by_hand():
    # ages 0, 60 s, 150 s with basis 3, -6, 9: weights 1, e^-0.2, e^-0.5
    mark = MarkCalculator(tick=Decimal("0.01"))
    for age, basis in ((150_000, 9), (60_000, -6), (0, 3)):
        mark.record_basis("X", contract_price=Decimal(100 + basis), index_price=Decimal(100), at=T - age)
    avg, count = mark.basis_average("X", now=T)
    w1, w2 = e("-0.2"), e("-0.5")
    expected = (3 - 6 * w1 + 9 * w2) / (1 + w1 + w2)
    assert count == 3
    assert abs(avg - expected) < Decimal("1e-25")  # (3 - 4.9124 + 5.4588) / 2.4253 = 1.4623
    assert mark.compute("X", index=Decimal(100), now=T).price == Decimal("101.46")


def test_window_edge_is_inclusive_at_five_minutes():
    mark = MarkCalculator(tick=TICK)
    mark.record_basis("X", contract_price=Decimal(110), index_price=Decimal(100), at=T - 300_001)
    mark.record_basis("X", contract_price=Decimal(104), index_price=Decimal(100), at=T - 300_000)
    avg, count = mark.basis_average("X", now=T)
    assert (avg, count) == (Decimal(4), 1)


def test_no_basis_means_mark_equals_index():
    result = MarkCalculator(tick=TICK).compute("X", index=Decimal("1234.56"), now=T)
    assert result.basis_average is None and result.observations == 0
    assert result.price == Decimal("1234.6")


@pytest.mark.parametrize(
    ("contract", "expected", "clamped"),
    [
        (Decimal(1080), Decimal("1050.0"), True),
        (Decimal(920), Decimal("950.0"), True),
        (Decimal(1049), Decimal("1049.0"), False),
    ],
)
def test_mark_is_clamped_to_five_percent_of_index(contract, expected, clamped):
    result = MarkCalculator(tick=TICK).compute("X", index=Decimal(1000), contract_price=contract, now=T)
    assert result.price == expected
    assert result.clamped is clamped


def test_rounding_never_leaves_the_band():
    # upper = 1000.5 x 1.05 = 1050.525; half-even to tick 1 gives 1051 > upper -> 1050
    result = MarkCalculator(tick=Decimal(1)).compute(
        "X", index=Decimal("1000.5"), contract_price=Decimal(2000), now=T
    )
    assert result.price == Decimal(1050)
    # lower = 1000.5 x 0.95 = 950.475 -> half-even 950 < lower -> 951
    result = MarkCalculator(tick=Decimal(1)).compute("Y", index=Decimal("1000.5"), contract_price=Decimal(1), now=T)
    assert result.price == Decimal(951)


def test_a_tick_too_coarse_for_the_band_takes_the_nearer_tick_around_it():
    # index 0.44, band [0.418, 0.462] holds no tick of 0.1: 0.4 (0.04 away), not 0.5 (0.06).
    assert MarkCalculator(tick=Decimal("0.1")).compute("X", index=Decimal("0.44"), now=T).price == Decimal("0.4")
    # index 0.46, band [0.437, 0.483]: still none; 0.5 is the nearer.
    assert MarkCalculator(tick=Decimal("0.1")).compute("X", index=Decimal("0.46"), now=T).price == Decimal("0.5")
    # index 0.04, band [0.038, 0.042]: 0 is never a mark.
    assert MarkCalculator(tick=Decimal("0.1")).compute("X", index=Decimal("0.04"), now=T).price == Decimal("0.1")


def test_tick_rounding_rule_is_half_even():
    assert quantize_to_tick(Decimal("100.25"), TICK) == Decimal("100.2")
    assert quantize_to_tick(Decimal("100.35"), TICK) == Decimal("100.4")
    assert quantize_to_tick(Decimal("100.251"), TICK) == Decimal("100.3")
    assert quantize_to_tick(Decimal("101.25"), Decimal("0.5")) == Decimal("101.0")
    assert quantize_to_tick(Decimal("101.75"), Decimal("0.5")) == Decimal("102.0")
    assert str(quantize_to_tick(Decimal("7"), Decimal("0.01"))) == "7.00"


def test_per_symbol_ticks():
    mark = MarkCalculator(tick={"BTCUSDT": Decimal("0.1"), "ETHUSDT": Decimal("0.01")})
    assert mark.compute("ETHUSDT", index=Decimal("3500.123"), now=T).price == Decimal("3500.12")
    with pytest.raises(KeyError):
        mark.compute("DOGEUSDT", index=Decimal(1), now=T)


def test_fallback_to_last_mark_when_no_index():
    mark = MarkCalculator(tick=TICK)
    assert mark.compute("X", index=None, now=T).status is MarkStatus.UNAVAILABLE
    mark.compute("X", index=Decimal(1000), now=T)
    fallback = mark.compute("X", index=None, now=T + 1000)
    assert fallback.status is MarkStatus.FALLBACK
    assert fallback.price == Decimal("1000.0") and fallback.candidate is None


def test_held_index_counts_as_no_index():
    index = IndexCalculator({"A": 1}, cache_ms=0)
    mark = MarkCalculator(tick=TICK)
    mark.compute("BTCUSDT", index=index.compute("BTCUSDT", [q("A", 100, ts=T)], now=T), now=T)
    held = index.compute("BTCUSDT", [], now=T + 1000)
    assert held.status is IndexStatus.HELD
    result = mark.compute("BTCUSDT", index=held, contract_price=Decimal(200), now=T + 1000)
    assert result.status is MarkStatus.FALLBACK and result.price == Decimal("100.0")
    assert "held" in result.reason
    assert mark.basis_average("BTCUSDT", now=T + 1000) == (None, 0)  # nothing recorded


def test_double_smoothing_stretches_window_and_decay():
    # basis 0 at 400 s ago, 10 now. Factor 1: 400 s is outside the window -> 10.
    # Factor 2: window 600 s, decay 600 s -> 10 / (1 + e^(-400/600)).
    mark = MarkCalculator(tick=Decimal("0.0001"))
    mark.record_basis("X", contract_price=Decimal(100), index_price=Decimal(100), at=T - 400_000)
    mark.record_basis("X", contract_price=Decimal(110), index_price=Decimal(100), at=T)
    assert mark.basis_average("X", now=T, smoothing=1) == (Decimal(10), 1)
    avg, count = mark.basis_average("X", now=T, smoothing=2)
    expected = PRECISE.divide(Decimal(10), 1 + PRECISE.exp(Decimal(-400) / Decimal(600)))
    assert count == 2 and abs(avg - expected) < Decimal("1e-25")
    result = mark.compute("X", index=Decimal(1000), now=T, smoothing=2)
    assert result.smoothing == 2 and result.price == Decimal("1006.6076")  # 10 / 1.5134
    with pytest.raises(ValueError, match="smoothing"):
        mark.compute("X", index=Decimal(1000), now=T, smoothing=5)


def test_paused_compute_repeats_the_last_mark_but_keeps_the_candidate():
    mark = MarkCalculator(tick=TICK)
    mark.compute("X", index=Decimal(1000), now=T)
    paused = mark.compute("X", index=Decimal(1020), now=T + 1000, paused=True)
    assert paused.status is MarkStatus.PAUSED
    assert paused.price == Decimal("1000.0") and paused.candidate == Decimal("1020.0")
    assert mark.last_mark("X") == Decimal("1000.0")


def test_basis_observations_are_time_ordered_and_idempotent_per_instant():
    mark = MarkCalculator(tick=TICK)
    mark.record_basis("X", contract_price=Decimal(101), index_price=Decimal(100), at=T)
    mark.record_basis("X", contract_price=Decimal(102), index_price=Decimal(100), at=T)  # replaces
    assert mark.basis_average("X", now=T) == (Decimal(2), 1)
    with pytest.raises(ValueError, match="older"):
        mark.record_basis("X", contract_price=Decimal(101), index_price=Decimal(100), at=T - 1)


@pytest.mark.parametrize("age", [0, 1, 999, 1000, 123_456, 299_999, 300_000])
def test_decay_table_matches_direct_exponential(age):
    direct = PRECISE.exp(Decimal(-age) / Decimal(300_000))
    assert abs(decay_weight(age) - direct) < Decimal("1e-28")  # 34-digit tables


ticks = st.sampled_from([Decimal("0.01"), Decimal("0.1"), Decimal("0.5"), Decimal(1)])


@settings(max_examples=200, deadline=None)
@given(
    index=st.decimals(min_value=Decimal(100), max_value=Decimal(1_000_000), places=4),
    tick=ticks,
    observations=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=400_000),
            st.decimals(min_value=Decimal("-0.5"), max_value=Decimal("0.5"), places=6),
        ),
        max_size=20,
    ),
)
def test_fresh_mark_stays_within_five_percent_of_index(index, tick, observations):
    mark = MarkCalculator(tick=tick)
    for age, rel in sorted(observations, key=lambda o: -o[0]):
        mark.record_basis("X", contract_price=index * (1 + rel), index_price=index, at=T - age)
    result = mark.compute("X", index=index, now=T)
    assert result.status is MarkStatus.FRESH
    assert index * Decimal("0.95") <= result.price <= index * Decimal("1.05")
    assert result.price % tick == 0


def direct_average(observations, now, decay_ms=300_000, window_ms=300_000):
    """The defining formula, computed naively with 40-digit exponentials."""
    num = den = Decimal(0)
    for t, b in observations:
        if now - window_ms <= t <= now:
            w = PRECISE.exp(Decimal(t - now) / Decimal(decay_ms))
            num += b * w
            den += w
    return None if den == 0 else PRECISE.divide(num, den)


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=200_000),  # gap to the next observation
            st.decimals(min_value=Decimal(-50), max_value=Decimal(50), places=4),  # basis
            st.booleans(),  # query after this observation?
        ),
        min_size=1,
        max_size=60,
    ),
    tail=st.integers(min_value=0, max_value=400_000),
)
def test_incremental_basis_average_equals_from_scratch(steps, tail):
    polled = MarkCalculator(tick=TICK)
    fresh = MarkCalculator(tick=TICK)
    observations = []
    t = T
    for gap, basis, query in steps:
        t += gap
        for calc in (polled, fresh):
            calc.record_basis("X", contract_price=Decimal(1000) + basis, index_price=Decimal(1000), at=t)
        if observations and observations[-1][0] == t:
            observations.pop()
        observations.append((t, basis))
        if query:
            polled.basis_average("X", now=t)
            polled.basis_average("X", now=t, smoothing=2)
    now = t + tail
    incremental = polled.basis_average("X", now=now)
    assert incremental == fresh.basis_average("X", now=now)  # exactly, digit for digit
    expected = direct_average(observations, now)
    if expected is None:
        assert incremental == (None, 0)
    else:
        assert abs(incremental[0] - expected) < Decimal("1e-24")
