"""Anomaly rules, severities, the pause and its lift, and their effect on the mark."""
from __future__ import annotations

from decimal import Decimal

import pytest

from apps.marketdata.engine import (
    AnomalyConfig,
    AnomalyDetector,
    AnomalyType,
    IndexCalculator,
    MarkCalculator,
    MarkStatus,
    PricingPipeline,
    Severity,
)

from .helpers import q

T = 1_717_200_000_000  # 2024-06-01T00:00:00Z
MIN = 60_000


def warmed(prices=(100,) * 5, volumes=(100,) * 10) -> AnomalyDetector:
    """A detector whose history ends with the given prices and volumes (the
    shorter list is padded at the front with its first value)."""
    detector = AnomalyDetector()
    n = max(len(prices), len(volumes))
    prices = (prices[0],) * (n - len(prices)) + tuple(prices)
    volumes = (volumes[0],) * (n - len(volumes)) + tuple(volumes)
    for i, (price, volume) in enumerate(zip(prices, volumes)):
        detector.observe("X", price=Decimal(price), volume=Decimal(volume), at=T + i)
    return detector


@pytest.mark.parametrize(
    ("price", "severity", "threshold"),
    [
        ("105", None, None),  # exactly 5%: not an anomaly
        ("105.01", Severity.MEDIUM, "0.05"),
        ("94.99", Severity.MEDIUM, "0.05"),
        ("110", Severity.MEDIUM, "0.05"),  # exactly 10%: still MEDIUM
        ("110.01", Severity.HIGH, "0.10"),
        ("89", Severity.HIGH, "0.10"),
    ],
)
def test_price_jump_against_mean_of_last_five(price, severity, threshold):
    check = warmed().observe("X", price=Decimal(price), at=T + MIN)
    if severity is None:
        assert check.anomalies == ()
        return
    (record,) = check.anomalies
    assert record.type is AnomalyType.PRICE_JUMP
    assert record.severity is severity
    assert record.threshold == Decimal(threshold)
    assert record.value == abs(Decimal(price) - 100) / 100
    assert (record.symbol, record.at, record.observed, record.reference) == ("X", T + MIN, Decimal(price), Decimal(100))


def test_jump_reference_is_the_mean_of_only_the_last_five():
    # history 94, 100 x5: the 94 has left the window, mean 100, 104 is 4%: nothing.
    # (With the 94 still counted the mean would be 98.8 and 104 a 5.3% MEDIUM jump.)
    check = warmed(prices=(94, 100, 100, 100, 100, 100)).observe("X", price=Decimal("104"), at=T + MIN)
    assert check.anomalies == ()
    check = warmed(prices=(94, 100, 100, 100, 100), volumes=(100,) * 5).observe("X", price=Decimal("104"), at=T + MIN)
    assert [a.severity for a in check.anomalies] == [Severity.MEDIUM]
    # mean of 100, 100, 100, 110, 110 = 104; 110 is 5.77% above it -> MEDIUM
    check = warmed(prices=(100, 100, 100, 110, 110)).observe("X", price=Decimal(110), at=T + MIN)
    assert [a.severity for a in check.anomalies] == [Severity.MEDIUM]


@pytest.mark.parametrize(
    ("volume", "severity"),
    [("300", None), ("300.01", Severity.MEDIUM), ("500", Severity.MEDIUM), ("500.01", Severity.HIGH)],
)
def test_volume_spike_against_mean_of_last_ten(volume, severity):
    check = warmed().observe("X", price=Decimal(100), volume=Decimal(volume), at=T + MIN)
    found = [(a.type, a.severity) for a in check.anomalies]
    assert found == ([] if severity is None else [(AnomalyType.VOLUME_SPIKE, severity)])
    if severity is not None:
        assert check.anomalies[0].value == Decimal(volume) / 100
        assert check.anomalies[0].reference == Decimal(100)


def test_spread_wider_than_two_percent_is_medium():
    detector = AnomalyDetector()
    assert detector.observe("X", price=Decimal(100), spread=Decimal("0.02"), at=T).anomalies == ()
    (record,) = detector.observe("X", price=Decimal(100), spread=Decimal("0.0201"), at=T + 1).anomalies
    assert (record.type, record.severity, record.threshold) == (
        AnomalyType.SPREAD_WIDENING,
        Severity.MEDIUM,
        Decimal("0.02"),
    )


def test_rules_wait_for_enough_history():
    detector = AnomalyDetector()
    for i in range(4):
        detector.observe("X", price=Decimal(100), volume=Decimal(100), at=T + i)
    # 4 prices, 4 volumes: neither rule applies yet
    assert detector.observe("X", price=Decimal(200), volume=Decimal(10_000), at=T + 10).anomalies == ()
    relaxed = AnomalyDetector(AnomalyConfig(min_price_history=1, min_volume_history=1))
    relaxed.observe("X", price=Decimal(100), volume=Decimal(100), at=T)
    kinds = {a.type for a in relaxed.observe("X", price=Decimal(200), volume=Decimal(1000), at=T + 1).anomalies}
    assert kinds == {AnomalyType.PRICE_JUMP, AnomalyType.VOLUME_SPIKE}


def test_high_pauses_mark_updates_for_five_minutes_with_an_emergency_flag():
    detector = warmed()
    check = detector.observe("X", price=Decimal(120), at=T + MIN)
    assert check.emergency and not check.warning
    assert check.state.paused_until == T + MIN + 5 * MIN
    assert check.state.describe() == "mark updates paused until 2024-06-01T00:06:00+00:00"
    assert detector.is_paused("X", now=T + 6 * MIN - 1)
    assert not detector.is_paused("X", now=T + 6 * MIN)
    assert detector.smoothing_factor("X", now=T + MIN) == 1  # HIGH pauses, it does not smooth


def test_medium_doubles_smoothing_for_five_minutes_with_a_warning():
    detector = warmed()
    check = detector.observe("X", price=Decimal(107), at=T + MIN)
    assert check.warning and not check.emergency
    assert not check.state.paused
    assert detector.smoothing_factor("X", now=T + MIN) == 2
    assert detector.smoothing_factor("X", now=T + 6 * MIN - 1) == 2
    assert detector.smoothing_factor("X", now=T + 6 * MIN) == 1
    assert "smoothing x2 until 2024-06-01T00:06:00+00:00" in check.state.describe()


def test_a_new_high_during_the_pause_extends_it():
    detector = warmed()
    detector.observe("X", price=Decimal(120), at=T + MIN)
    # mean of 100, 100, 100, 100, 120 = 104; 125 is 20% above -> HIGH again
    detector.observe("X", price=Decimal(125), at=T + 2 * MIN)
    assert detector.state("X", now=T + 2 * MIN).paused_until == T + 7 * MIN


def test_lift_pause_is_an_ops_action_with_an_audit_entry():
    detector = warmed()
    detector.observe("X", price=Decimal(120), at=T + MIN)
    assert detector.lift_pause("X", at=T + 2 * MIN, by="ops:carol") is True
    assert not detector.is_paused("X", now=T + 2 * MIN)
    assert detector.lifts[-1].by == "ops:carol" and detector.lifts[-1].was_paused_until == T + 6 * MIN
    # history was reset: the accepted level is not compared with the old one
    assert detector.observe("X", price=Decimal(121), at=T + 3 * MIN).anomalies == ()
    assert detector.lift_pause("X", at=T + 4 * MIN) is False  # nothing to lift


def test_a_real_move_is_absorbed_instead_of_pausing_forever():
    detector = warmed()
    severities = [
        [a.severity for a in detector.observe("X", price=Decimal(85), at=T + i * 5000).anomalies]
        for i in range(1, 8)
    ]
    # 85 vs mean(100 x4, 85) = 97 -> 12.4% HIGH; ... mean(100, 85 x4) = 88 -> 3.4% none
    assert severities[0] == [Severity.HIGH]
    assert severities[-1] == []
    assert not detector.is_paused("X", now=T + 7 * 5000 + 5 * MIN)


def test_anomaly_record_audit_shape():
    (record,) = warmed().observe("X", price=Decimal(120), at=T + MIN).anomalies
    assert record.to_audit() == {
        "type": "price_jump",
        "severity": "high",
        "symbol": "X",
        "at": T + MIN,
        "value": "0.2",
        "threshold": "0.10",
        "observed": "120",
        "reference": "100",
    }
    assert "HIGH price jump 20.00%" in record.message


# -- the pipeline wires the rules to the mark -----------------------------------------


def pipeline() -> PricingPipeline:
    return PricingPipeline(
        IndexCalculator({"A": 1, "B": 1}, cache_ms=0),
        MarkCalculator(tick=Decimal("0.1")),
        AnomalyDetector(),
    )


def feed(p: PricingPipeline, price, at, volume="1000"):
    return p.update("BTCUSDT", [q("A", price, volume, ts=at), q("B", price, volume, ts=at)], now=at)


def test_pipeline_pauses_the_mark_on_high_and_resumes_after_five_minutes():
    p = pipeline()
    for i in range(5):
        assert feed(p, 1000, T + i * 1000).mark.price == Decimal("1000.0")
    # The index rule drops quotes >10% from the last index, so the jump comes in two
    # steps: 1090 is 9% above the mark history mean (MEDIUM); 1150 is 5.5% above the
    # last index (accepted) but 13.0% above mean(1000 x4, 1090) = 1018 (HIGH).
    medium = feed(p, 1090, T + 5000)
    assert medium.check.warning and medium.mark.status is MarkStatus.FRESH
    high = feed(p, 1150, T + 6000)
    assert high.emergency
    assert high.mark.status is MarkStatus.PAUSED
    assert high.mark.price == Decimal("1090.0") and high.mark.candidate == Decimal("1150.0")
    assert high.mark.smoothing == 2  # the MEDIUM one tick earlier doubled smoothing
    assert any("HIGH price jump" in a for a in high.alerts)

    during = feed(p, 1150, T + 6000 + 4 * MIN)
    assert during.mark.status is MarkStatus.PAUSED and during.mark.price == Decimal("1090.0")
    after = feed(p, 1150, T + 6000 + 5 * MIN)
    assert after.mark.status is MarkStatus.FRESH and after.mark.price == Decimal("1150.0")


def test_pipeline_lift_pause_resumes_immediately():
    p = pipeline()
    for i in range(5):
        feed(p, 1000, T + i * 1000)
    feed(p, 1090, T + 5000)
    assert feed(p, 1150, T + 6000).mark.status is MarkStatus.PAUSED
    p.detector.lift_pause("BTCUSDT", at=T + 7000, by="ops")
    assert feed(p, 1150, T + 7000).mark.status is MarkStatus.FRESH


def test_pipeline_reuses_the_cached_index_without_repeating_alerts():
    p = PricingPipeline(IndexCalculator({"A": 1}), MarkCalculator(tick=Decimal("0.1")))
    first = p.update("BTCUSDT", [q("A", 1000, ts=T)], now=T, contract_price=Decimal(1001))
    again = p.update("BTCUSDT", [q("A", 1200, ts=T + 1000)], now=T + 1000, contract_price=Decimal(1002))
    assert again.cached and again.check is None
    assert again.mark.price == first.mark.price
    # the basis observation of the cached tick was still recorded
    assert p.mark.basis_average("BTCUSDT", now=T + 1000)[1] == 2


def test_pipeline_volume_and_spread_inputs():
    p = PricingPipeline(
        IndexCalculator({"A": 1, "B": 1, "C": 1}, cache_ms=0),
        MarkCalculator(tick=Decimal("0.1")),
        AnomalyDetector(AnomalyConfig(min_price_history=1, min_volume_history=1)),
    )
    wide = dict(bid=Decimal(97), ask=Decimal(103))  # 6% spread
    tight = dict(bid=Decimal("99.9"), ask=Decimal("100.1"))
    p.update("BTCUSDT", [q("A", 100, 10, ts=T, **tight), q("B", 100, 10, ts=T, **tight)], now=T)
    # one wide venue out of three: the median spread is still tight; volume 30 vs 20
    update = p.update(
        "BTCUSDT",
        [q("A", 100, 10, ts=T + 1, **wide), q("B", 100, 10, ts=T + 1, **tight), q("C", 100, 10, ts=T + 1, **tight)],
        now=T + 1,
    )
    assert update.check.anomalies == ()
    # two wide venues: market-wide widening; volume 100 vs mean(20, 30) = 4x -> MEDIUM
    update = p.update(
        "BTCUSDT",
        [q("A", 100, 40, ts=T + 2, **wide), q("B", 100, 30, ts=T + 2, **wide), q("C", 100, 30, ts=T + 2, **tight)],
        now=T + 2,
    )
    found = {(a.type, a.severity, a.value) for a in update.check.anomalies}
    assert found == {
        (AnomalyType.SPREAD_WIDENING, Severity.MEDIUM, Decimal("0.06")),
        (AnomalyType.VOLUME_SPIKE, Severity.MEDIUM, Decimal(4)),
    }
