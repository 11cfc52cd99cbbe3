"""Price sources: simulated venues (determinism, rates, scenarios), CSV replay, live."""
from __future__ import annotations

import csv
from decimal import Decimal

import pytest

from apps.marketdata.engine import (
    Crash,
    CsvFormatError,
    CsvReplay,
    DropReason,
    IndexCalculator,
    LiveVenues,
    Outage,
    Outlier,
    SimulatedVenues,
    SourceUnavailable,
    StaleFeed,
    SymbolSpec,
    VenueQuote,
    VenueSpec,
    make_source,
    write_csv,
)

from .helpers import SAMPLE, SAMPLE_T0, record_sample

T0 = 1_700_000_000_000
H = 3_600_000


def key(quotes):
    return [(x.venue, x.symbol, x.price, x.volume, x.bid, x.ask, x.timestamp) for x in quotes]


# -- simulated venues ---------------------------------------------------------------


def test_simulation_is_deterministic_for_a_seed_and_order_independent():
    times = [T0 + 1000, T0 + 59_321, T0 + H - 1, T0 + H + 500, T0 + 5 * H + 12_345]
    a = SimulatedVenues.default(seed=7)
    b = SimulatedVenues.default(seed=7)
    forward = [key(a.quotes_at(t)) for t in times]
    backward = [key(b.quotes_at(t)) for t in reversed(times)][::-1]  # far future first
    assert forward == backward
    assert all(len(snapshot) == 6 for snapshot in forward[1:])  # 3 venues x 2 symbols
    other = SimulatedVenues.default(seed=8)
    assert [key(other.quotes_at(t)) for t in times] != forward


def test_path_is_continuous_across_generation_chunks():
    sim = SimulatedVenues.default(seed=3)
    before, after = sim.true_price("BTCUSDT", T0 + H - 1000), sim.true_price("BTCUSDT", T0 + H)
    assert abs(after / before - 1) < 0.01


def test_no_quote_before_the_market_opens_and_latency_is_respected():
    sim = SimulatedVenues.default(seed=1)
    assert sim.quotes_at(T0 - 1) == [] and sim.quotes_at(T0) == []
    latency = {"binance": 50, "okx": 120, "bybit": 200}
    for t in range(T0 + 2000, T0 + 60_000, 777):
        for quote in sim.quotes_at(t):
            assert quote.timestamp <= t - latency[quote.venue]
            assert quote.bid < quote.ask and quote.price > 0 and quote.volume > 0


def single(rate_kwargs, seed=11) -> SimulatedVenues:
    quiet = {"latency_ms": 0, "jitter_ms": 0, "outlier_rate": 0, "stale_rate": 0, "outage_rate": 0}
    venue = VenueSpec("v", **{**quiet, **rate_kwargs})
    return SimulatedVenues([SymbolSpec("S", Decimal(100), volatility=0.5)], [venue], seed=seed, t0=T0)


SLOTS = 20_000


def test_outliers_appear_at_the_configured_rate():
    sim = single({"outlier_rate": 0.01})
    outliers = 0
    for k in range(SLOTS):
        (quote,) = sim.quotes_at(T0 + k * 1000)
        if abs(float(quote.price) / sim.true_price("S", quote.timestamp) - 1) > 0.1:
            outliers += 1
    assert 150 <= outliers <= 250  # expected 200, sd 14


def test_outages_appear_at_the_configured_rate_and_silence_the_venue():
    sim = single({"outage_rate": 0.002, "outage_ms": (5_000, 15_000)})
    windows = sim.outage_windows("v", start=T0, stop=T0 + SLOTS * 1000)
    assert 25 <= len(windows) <= 55  # expected 40 episodes, sd 6
    down = 0
    for k in range(SLOTS):
        t = T0 + k * 1000
        inside = any(a <= t < b for a, b in windows)
        assert (sim.quotes_at(t) == []) is inside
        down += inside
    assert 0.01 <= down / SLOTS <= 0.035  # about 40 x 10 s / 20,000 s = 2%


def test_stale_feeds_appear_at_the_configured_rate():
    sim = single({"stale_rate": 0.002, "stale_ms": (15_000, 30_000)})
    frozen_stamps = set()
    frozen_slots = 0
    for k in range(SLOTS):
        t = T0 + k * 1000
        (quote,) = sim.quotes_at(t)
        if quote.timestamp < t:
            frozen_slots += 1
            frozen_stamps.add(quote.timestamp)
    assert 25 <= len(frozen_stamps) <= 55  # expected 40 episodes
    assert 0.025 <= frozen_slots / SLOTS <= 0.07  # about 40 x 22.5 s / 20,000 s = 4.5%


def test_crash_scenario_takes_thirty_percent_off_over_ten_minutes():
    at = T0 + 10 * 60_000
    base = SimulatedVenues.default(seed=5)
    crashed = SimulatedVenues.default(seed=5, scenarios=[Crash("BTCUSDT", at=at, duration_ms=600_000, drop=0.30)])
    assert crashed.true_price("BTCUSDT", at) == base.true_price("BTCUSDT", at)
    half = crashed.true_price("BTCUSDT", at + 300_000) / base.true_price("BTCUSDT", at + 300_000)
    full = crashed.true_price("BTCUSDT", at + 900_000) / base.true_price("BTCUSDT", at + 900_000)
    assert half == pytest.approx(0.85) and full == pytest.approx(0.70)
    assert crashed.true_price("ETHUSDT", at + 900_000) == base.true_price("ETHUSDT", at + 900_000)


def test_outage_stale_and_outlier_scenarios():
    at = T0 + 120_000
    sim = SimulatedVenues.default(seed=5)
    base_quotes = {(x.venue, x.symbol): x for x in sim.quotes_at(at + 1000)}
    sim.add_scenario(Outage("okx", at=at, duration_ms=30_000))
    sim.add_scenario(StaleFeed("bybit", at=at, duration_ms=30_000, symbol="ETHUSDT"))
    sim.add_scenario(Outlier("binance", "BTCUSDT", at=at, factor=1.2))

    during = {(x.venue, x.symbol): x for x in sim.quotes_at(at + 1000)}
    assert not any(v == "okx" for v, _ in during)
    stale = during[("bybit", "ETHUSDT")]
    assert stale.timestamp < at  # the feed repeats its last quote from before `at`
    outlier = during[("binance", "BTCUSDT")]
    assert outlier.timestamp == at
    assert float(outlier.price) == pytest.approx(float(base_quotes[("binance", "BTCUSDT")].price) * 1.2, rel=1e-4)

    after = {(x.venue, x.symbol): x for x in sim.quotes_at(at + 32_000)}
    assert ("okx", "BTCUSDT") in after
    assert after[("bybit", "ETHUSDT")].timestamp >= at + 30_000
    with pytest.raises(ValueError, match="unknown venue"):
        sim.add_scenario(Outage("kraken", at=at, duration_ms=1))


def test_index_over_a_simulated_crash_keeps_tracking_the_market():
    at = T0 + 60_000
    sim = SimulatedVenues.default(seed=9, scenarios=[Crash("BTCUSDT", at=at, duration_ms=600_000)])
    index = IndexCalculator(sim.weights())
    last = None
    for t in range(T0 + 5000, at + 900_000, 5000):
        result = index.compute("BTCUSDT", sim.quotes_at(t, symbols=["BTCUSDT"]), now=t)
        assert result.is_fresh
        last = result
    assert float(last.price) == pytest.approx(sim.true_price("BTCUSDT", last.computed_at), rel=0.003)


# -- CSV replay -----------------------------------------------------------------------


def test_sample_file_is_the_documented_recording():
    """`ticks_sample.csv` = `helpers.record_sample()` (seed 2024 with an okx outlier at
    +30 s, a frozen bybit ETH feed from +50 s to +70 s and an okx outage at +70-80 s)."""
    replay = CsvReplay(SAMPLE)
    assert key(replay.ticks()) == key(record_sample())
    assert len(replay.ticks_loaded) == 420
    assert replay.symbols == ("BTCUSDT", "ETHUSDT")
    assert replay.venues == ("binance", "bybit", "okx")


def test_replaying_the_sample_shows_its_events_in_the_index():
    replay = CsvReplay(SAMPLE)
    weights = {"binance": 4, "okx": 3, "bybit": 3}
    index = IndexCalculator(weights, cache_ms=0)
    seen: dict[DropReason, set[str]] = {}
    for batch in replay.batches(start=SAMPLE_T0 + 1000, stop=SAMPLE_T0 + 90_000, step_ms=1000):
        for symbol in replay.symbols:
            result = index.compute(symbol, batch.for_symbol(symbol), now=batch.at)
            assert result.is_fresh
            for dropped in result.dropped:
                seen.setdefault(dropped.reason, set()).add(f"{dropped.quote.venue}:{symbol}")
    # A recording cannot tell an outage from a frozen feed: during the okx outage its
    # last quotes simply age until the index drops them as stale.
    assert seen == {
        DropReason.DEVIATION: {"okx:BTCUSDT"},
        DropReason.STALE: {"bybit:ETHUSDT", "okx:BTCUSDT", "okx:ETHUSDT"},
    }


def write(tmp_path, text: str):
    path = tmp_path / "ticks.csv"
    path.write_text(text)
    return path


HEADER = "timestamp,venue,symbol,price,volume,bid,ask\n"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1000,okx,BTCUSDT,abc,1,,\n", "price 'abc' is not a decimal number"),
        ("1000,okx,BTCUSDT,100,1\n", "expected 7 fields, found 5"),
        ("2024-06-01T00:00:00,okx,BTCUSDT,100,1,,\n", "has no timezone offset"),
        ("yesterday,okx,BTCUSDT,100,1,,\n", "neither epoch milliseconds nor ISO-8601"),
        ("1000,okx,BTCUSDT,NaN,1,,\n", "price 'NaN' is not finite"),
        ("1000,,BTCUSDT,100,1,,\n", "venue is empty"),
        ("1000,okx,BTCUSDT,100,,,\n", "volume is empty"),
        ("1000,okx,BTCUSDT,100,1,99.9,x\n", "ask 'x' is not a decimal number"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
    path = write(tmp_path, HEADER + "999,okx,BTCUSDT,100,1,,\n" + row)
    with pytest.raises(CsvFormatError) as excinfo:
        CsvReplay(path)
    assert excinfo.value.line == 3
    assert message in str(excinfo.value)
    assert str(excinfo.value).startswith(f"{path}:3: ")


def test_header_problems(tmp_path):
    with pytest.raises(CsvFormatError, match=r":1: empty file"):
        CsvReplay(write(tmp_path, ""))
    with pytest.raises(CsvFormatError, match=r":1: header lacks column\(s\) volume"):
        CsvReplay(write(tmp_path, "timestamp,venue,symbol,price,bid,ask\n"))


def test_lenient_mode_skips_and_reports_bad_rows(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + "1000,okx,BTCUSDT,100,1,,\n"
        + "1001,okx,BTCUSDT,oops,1,,\n"
        + "\n"
        + "1002,okx,BTCUSDT,101,1,,\n",
    )
    replay = CsvReplay(path, strict=False)
    assert [x.price for x in replay.ticks()] == [Decimal(100), Decimal(101)]
    assert [(e.line, e.message) for e in replay.errors] == [(3, "price 'oops' is not a decimal number")]


def test_columns_in_any_order_iso_timestamps_and_empty_book(tmp_path):
    path = write(
        tmp_path,
        "symbol,venue,price,volume,bid,ask,timestamp\n"
        "BTCUSDT,okx,100.5,2,,,2024-06-01T00:00:01Z\n"
        "BTCUSDT,okx,-3,2,,,2024-06-01T02:00:00.500+02:00\n",
    )
    first, second = CsvReplay(path).ticks()  # replayed in timestamp order
    assert first.timestamp == SAMPLE_T0 + 500 and first.price == Decimal(-3)  # loaded: the index drops it
    assert (second.timestamp, second.bid, second.ask) == (SAMPLE_T0 + 1000, None, None)


def test_replay_quotes_at_returns_the_latest_quote_per_venue_and_symbol(tmp_path):
    rows = [
        VenueQuote("a", "S", Decimal(1), Decimal(1), None, None, 1000),
        VenueQuote("a", "S", Decimal(2), Decimal(1), None, None, 2000),
        VenueQuote("b", "S", Decimal(3), Decimal(1), None, None, 1500),
        VenueQuote("a", "T", Decimal(4), Decimal(1), None, None, 3000),
    ]
    path = tmp_path / "rec.csv"
    assert write_csv(rows, path) == 4
    replay = CsvReplay([path])
    assert replay.quotes_at(999) == []
    assert key(replay.quotes_at(1999)) == key([rows[0], rows[2]])
    assert key(replay.quotes_at(5000, symbols=["S"])) == key([rows[1], rows[2]])
    batches = list(replay.batches(start=1000, stop=4000, step_ms=1000))
    assert [len(b.quotes) for b in batches] == [1, 2, 3]


# -- live adapter and factory ---------------------------------------------------------


def test_live_source_without_the_optional_library_fails_clearly():
    with pytest.raises(SourceUnavailable, match="optional package 'ccxt'"):
        LiveVenues(["binance"], ["BTC/USDT"])
    with pytest.raises(SourceUnavailable):
        make_source("live", venues=["binance"], symbols=["BTC/USDT"])


def test_live_source_with_an_injected_fetcher():
    quote = VenueQuote("binance", "BTCUSDT", Decimal(1), Decimal(1), None, None, 1)
    live = LiveVenues(["binance"], ["BTCUSDT"], fetcher=lambda venue, symbol: quote)
    assert live.quotes_at(123) == [quote]


def test_factory():
    assert isinstance(make_source(), SimulatedVenues)
    assert isinstance(make_source("csv", paths=SAMPLE), CsvReplay)
    with pytest.raises(ValueError, match="unknown price source"):
        make_source("carrier-pigeon")


def test_sample_has_the_documented_columns():
    with SAMPLE.open() as handle:
        assert next(csv.reader(handle)) == ["timestamp", "venue", "symbol", "price", "volume", "bid", "ask"]
