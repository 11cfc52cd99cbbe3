"""Price sources: where venue quotes come from, behind one small interface.

`PriceSource.quotes_at(now)` returns the quotes a consumer would hold at instant
`now` (the latest quote each venue has delivered for each symbol) and
`batches(start, stop, step_ms)` iterates such snapshots on a time grid; the
pricefeed process and the benchmark need nothing else. `SimulatedVenues` (the
default) draws per symbol a seeded price path (geometric Brownian motion with
Poisson jumps and a Markov chain of volatility regimes) quoted by several venues,
each with its own noise, spread, volume, quote interval, latency, occasional
outliers, frozen (stale) feeds and outages; it is a pure function of (seed,
configuration, scenarios, time), because all randomness comes from counter-based
streams per (symbol, venue, hour), and scenario events (`Crash`, `Outage`,
`StaleFeed`, `Outlier`) force a crash, an outage, a frozen feed or an outlier
quote at a chosen time. `CsvReplay` replays recorded ticks (timestamp, venue,
symbol, price, volume, bid, ask), raising `CsvFormatError` with file and line for
a malformed row, and `write_csv` records quotes in that format. `LiveVenues` is
the interface point for real exchanges, off by default and adding no dependency:
it takes a `fetcher` callable, and without one needs the optional `ccxt` package,
raising `SourceUnavailable` when it is missing. `make_source(kind, **options)`
builds one by name ("simulated", "csv", "live") for configuration-driven processes.
"""
from __future__ import annotations

import bisect
import csv
import logging
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from .quotes import VenueQuote, to_decimal, to_ms

logger = logging.getLogger(__name__)

__all__ = [
    "CSV_COLUMNS",
    "Crash",
    "CsvFormatError",
    "CsvReplay",
    "LiveVenues",
    "Outage",
    "Outlier",
    "PriceSource",
    "QuoteBatch",
    "SimulatedVenues",
    "SourceUnavailable",
    "StaleFeed",
    "SymbolSpec",
    "VenueSpec",
    "make_source",
    "write_csv",
]

CSV_COLUMNS = ("timestamp", "venue", "symbol", "price", "volume", "bid", "ask")


class SourceUnavailable(RuntimeError):
    """A configured price source cannot run (missing optional library, ...)."""


@dataclass(frozen=True, slots=True)
class QuoteBatch:
    """The quotes available at instant `at` (epoch ms)."""

    at: int
    quotes: tuple[VenueQuote, ...]

    def for_symbol(self, symbol: str) -> list[VenueQuote]:
        return [q for q in self.quotes if q.symbol == symbol]


class PriceSource(ABC):
    """What the pricing engine needs from a source of venue quotes."""

    @property
    @abstractmethod
    def symbols(self) -> tuple[str, ...]:
        """Symbols this source quotes."""

    @property
    @abstractmethod
    def venues(self) -> tuple[str, ...]:
        """Venues this source quotes."""

    @abstractmethod
    def quotes_at(self, now: int | datetime, *, symbols: Iterable[str] | None = None) -> list[VenueQuote]:
        """The latest quote of each venue for each symbol as known at `now`.

        A venue that is down contributes nothing; a venue whose feed is stuck
        contributes its old quote (the index drops it as stale).
        """

    def weights(self) -> dict[str, Decimal]:
        """Suggested index weights per venue (equal unless the source knows better)."""
        return {v: Decimal(1) for v in self.venues}

    def batches(
        self,
        *,
        start: int | datetime,
        stop: int | datetime,
        step_ms: int = 1000,
        symbols: Iterable[str] | None = None,
    ) -> Iterator[QuoteBatch]:
        """Snapshots at start, start + step, ... (< stop)."""
        if step_ms <= 0:
            raise ValueError("step_ms must be positive")
        wanted = None if symbols is None else tuple(symbols)
        t = to_ms(start, name="start")
        end = to_ms(stop, name="stop")
        while t < end:
            yield QuoteBatch(at=t, quotes=tuple(self.quotes_at(t, symbols=wanted)))
            t += step_ms


# ---------------------------------------------------------------------------------
# Simulated venues
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SymbolSpec:
    """A simulated symbol: start price, price decimals and its dynamics.

    `volatility` is the annualized volatility of the "normal" regime; the calm
    and turbulent regimes scale it (see `SimulatedVenues.REGIMES`). Jumps arrive
    `jump_rate_per_day` times a day on average with log size N(0, jump_sd).
    """

    symbol: str
    start_price: Decimal
    price_places: int = 2
    volatility: float = 0.8
    jump_rate_per_day: float = 3.0
    jump_sd: float = 0.01
    volume_scale: float = 1.0


@dataclass(frozen=True)
class VenueSpec:
    """A simulated venue and its data quality.

    Rates are probabilities per quote slot (one slot per `interval_ms`):
    `outlier_rate` of a quote 12-30% off the true price, `stale_rate` of the feed
    freezing (repeating an old quote with its old timestamp) for a duration drawn
    from `stale_ms`, `outage_rate` of the venue going down for all symbols for a
    duration from `outage_ms`. Quote slot k is stamped t0 + phase + k*interval and
    delivered `latency_ms` + U[0, jitter_ms) later (jitter < interval keeps order).
    """

    name: str
    weight: Decimal = Decimal(1)
    interval_ms: int = 1000
    latency_ms: int = 100
    jitter_ms: int = 200
    noise_bps: float = 3.0
    spread_bps: float = 4.0
    volume_mean: float = 800.0
    outlier_rate: float = 0.0005
    stale_rate: float = 0.0003
    stale_ms: tuple[int, int] = (15_000, 60_000)
    outage_rate: float = 0.00005
    outage_ms: tuple[int, int] = (30_000, 180_000)

    def __post_init__(self) -> None:
        if self.interval_ms <= 0 or not 0 <= self.jitter_ms < self.interval_ms or self.latency_ms < 0:
            raise ValueError(f"{self.name}: need interval > 0, 0 <= jitter < interval, latency >= 0")
        for rate in (self.outlier_rate, self.stale_rate, self.outage_rate):
            if not 0 <= rate <= 1:
                raise ValueError(f"{self.name}: rates are probabilities in [0, 1]")
        for lo, hi in (self.stale_ms, self.outage_ms):
            if not 0 < lo <= hi:
                raise ValueError(f"{self.name}: duration ranges need 0 < low <= high")


@dataclass(frozen=True)
class Crash:
    """Scenario: `symbol`'s true price falls by `drop` (0.30 = -30%) linearly over
    [at, at + duration_ms] and stays there (the random path continues on top)."""

    symbol: str
    at: int
    duration_ms: int
    drop: float = 0.30

    def factor(self, t: int) -> float:
        if t <= self.at:
            return 1.0
        progress = min(1.0, (t - self.at) / self.duration_ms) if self.duration_ms > 0 else 1.0
        return 1.0 - self.drop * progress


@dataclass(frozen=True)
class Outage:
    """Scenario: `venue` publishes nothing for quotes stamped in [at, at + duration_ms)."""

    venue: str
    at: int
    duration_ms: int

    def covers(self, venue: str, t: int) -> bool:
        return venue == self.venue and self.at <= t < self.at + self.duration_ms


@dataclass(frozen=True)
class StaleFeed:
    """Scenario: `venue`'s feed (for `symbol`, or all symbols when None) repeats its
    last quote from before `at`, old timestamp included, until at + duration_ms."""

    venue: str
    at: int
    duration_ms: int
    symbol: str | None = None

    def covers(self, venue: str, symbol: str, t: int) -> bool:
        return (
            venue == self.venue
            and (self.symbol is None or symbol == self.symbol)
            and self.at <= t < self.at + self.duration_ms
        )


@dataclass(frozen=True)
class Outlier:
    """Scenario: `venue`'s first quote of `symbol` stamped at or after `at` is
    multiplied by `factor` (1.2 = 20% too high)."""

    venue: str
    symbol: str
    at: int
    factor: float = 1.2


_CHUNK = 3600  # path steps / venue slots per random-stream chunk
_YEAR_MS = 365 * 86_400_000

# Stream kinds for the seed sequences (never reorder: it would change every path).
_PATH, _REGIME, _VENUE, _OUTAGE = 1, 2, 3, 4


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


@dataclass
class _VenueChunk:
    noise: np.ndarray
    outlier: np.ndarray  # signed relative move, 0.0 when not an outlier
    volume: np.ndarray
    jitter: np.ndarray
    stale_src: np.ndarray  # slot whose quote this slot repeats (== own slot if fresh)


@dataclass
class _Intervals:
    starts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    ends: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


class SimulatedVenues(PriceSource):
    """Deterministic simulated venues; see the module docstring.

    `t0` (epoch ms) is when the simulated market opens: there are no quotes
    before it. `step_ms` is the resolution of the true price path.
    """

    # (name, volatility multiplier, mean duration in ms)
    REGIMES: tuple[tuple[str, float, int], ...] = (
        ("calm", 0.5, 2 * 3_600_000),
        ("normal", 1.0, 4 * 3_600_000),
        ("turbulent", 3.0, 20 * 60_000),
    )

    def __init__(
        self,
        symbols: Sequence[SymbolSpec],
        venues: Sequence[VenueSpec],
        *,
        seed: int = 0,
        t0: int | datetime = 1_700_000_000_000,
        step_ms: int = 1000,
        scenarios: Iterable[Crash | Outage | StaleFeed | Outlier] = (),
    ) -> None:
        if not symbols or not venues:
            raise ValueError("need at least one symbol and one venue")
        if len({s.symbol for s in symbols}) != len(symbols) or len({v.name for v in venues}) != len(venues):
            raise ValueError("symbol and venue names must be unique")
        if seed < 0:
            raise ValueError("seed must be non-negative")
        for v in venues:
            if max(v.stale_ms[1], v.outage_ms[1]) >= _CHUNK * v.interval_ms:
                raise ValueError(f"{v.name}: stale/outage durations must be shorter than {_CHUNK} slots")
        self._symbols = tuple(symbols)
        self._venues = tuple(venues)
        self._sym_index = {s.symbol: i for i, s in enumerate(self._symbols)}
        self.seed = seed
        self.t0 = to_ms(t0, name="t0")
        self.step_ms = step_ms
        self._scenarios: list[Crash | Outage | StaleFeed | Outlier] = []
        # Path chunk starts: per symbol, list of (log price, regime) at chunk c.
        self._chunk_starts: dict[int, list[tuple[float, int]]] = {
            i: [(math.log(float(s.start_price)), 1)] for i, s in enumerate(self._symbols)
        }
        self._paths: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._venue_chunks: OrderedDict[tuple[int, int, int], _VenueChunk] = OrderedDict()
        self._outages: OrderedDict[tuple[int, int], _Intervals] = OrderedDict()
        self._cache_limit = 4 * len(self._symbols) * len(self._venues) + 16
        self._last_quote: dict[tuple[int, int], tuple[int, VenueQuote | None]] = {}
        for event in scenarios:
            self.add_scenario(event)

    # -- construction helpers ---------------------------------------------------------

    @classmethod
    def default(cls, *, seed: int = 0, **kwargs) -> SimulatedVenues:
        """BTCUSDT and ETHUSDT on three venues with realistic defaults."""
        symbols = [
            SymbolSpec("BTCUSDT", Decimal("67000"), price_places=1, volatility=0.6),
            SymbolSpec("ETHUSDT", Decimal("3500"), price_places=2, volatility=0.8, volume_scale=5.0),
        ]
        venues = [
            VenueSpec("binance", weight=Decimal(4), latency_ms=50, noise_bps=2.0, volume_mean=1500.0),
            VenueSpec("okx", weight=Decimal(3), latency_ms=120, noise_bps=3.0, volume_mean=900.0),
            VenueSpec("bybit", weight=Decimal(3), interval_ms=2000, latency_ms=200, jitter_ms=400, noise_bps=4.0),
        ]
        return cls(symbols, venues, seed=seed, **kwargs)

    @classmethod
    def synthetic(cls, n_symbols: int, n_venues: int, *, seed: int = 0, **kwargs) -> SimulatedVenues:
        """`n_symbols` symbols SYM000USDT... on `n_venues` venues (benchmarks)."""
        gen = _rng(seed, 99)
        symbols = [
            SymbolSpec(
                f"SYM{i:03d}USDT",
                Decimal(f"{float(gen.uniform(1, 50_000)):.2f}"),
                price_places=2,
                volatility=float(gen.uniform(0.4, 1.2)),
            )
            for i in range(n_symbols)
        ]
        venues = [
            VenueSpec(f"venue{j}", weight=Decimal(1 + j % 3), latency_ms=50 + 40 * j, noise_bps=2.0 + j)
            for j in range(n_venues)
        ]
        return cls(symbols, venues, seed=seed, **kwargs)

    def add_scenario(self, event: Crash | Outage | StaleFeed | Outlier) -> None:
        """Add a forced event; results for the affected times change accordingly."""
        if isinstance(event, Crash | Outlier) and event.symbol not in self._sym_index:
            raise ValueError(f"unknown symbol {event.symbol}")
        if isinstance(event, Outage | StaleFeed | Outlier) and event.venue not in {v.name for v in self._venues}:
            raise ValueError(f"unknown venue {event.venue}")
        if not isinstance(event, Crash | Outage | StaleFeed | Outlier):
            raise TypeError(f"not a scenario event: {event!r}")
        self._scenarios.append(event)
        self._last_quote.clear()

    # -- PriceSource ------------------------------------------------------------------

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(s.symbol for s in self._symbols)

    @property
    def venues(self) -> tuple[str, ...]:
        return tuple(v.name for v in self._venues)

    def weights(self) -> dict[str, Decimal]:
        return {v.name: v.weight for v in self._venues}

    def quotes_at(self, now: int | datetime, *, symbols: Iterable[str] | None = None) -> list[VenueQuote]:
        now_ms = to_ms(now, name="now")
        if symbols is None:
            sym_ids = range(len(self._symbols))
        else:
            sym_ids = [self._sym_index[s] for s in symbols]
        out: list[VenueQuote] = []
        for vi, venue in enumerate(self._venues):
            k = self._latest_delivered_slot(vi, now_ms)
            if k < 0:
                continue
            if self._venue_down(vi, k):
                continue
            for si in sym_ids:
                cached = self._last_quote.get((vi, si))
                if cached is not None and cached[0] == k:
                    quote = cached[1]
                else:
                    quote = self._quote(vi, si, k)
                    self._last_quote[(vi, si)] = (k, quote)
                if quote is not None:
                    out.append(quote)
        return out

    # -- introspection (tests, ops) --------------------------------------------------------

    def true_price(self, symbol: str, t: int | datetime) -> float:
        """The simulated fair price at `t` (float: a simulation input, never booked)."""
        t_ms = to_ms(t, name="t")
        si = self._sym_index[symbol]
        return self._path_price(si, t_ms) * self._crash_factor(symbol, t_ms)

    def slot_time(self, venue: str, k: int) -> int:
        vi = self.venues.index(venue)
        spec = self._venues[vi]
        return self.t0 + self._phase(vi) + k * spec.interval_ms

    # -- internals: path ---------------------------------------------------------------

    def _regime_probs(self) -> np.ndarray:
        return np.array([self.step_ms / duration for _, _, duration in self.REGIMES])

    def _path_chunk(self, si: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(prices, regimes) for path steps [c*_CHUNK, (c+1)*_CHUNK) of symbol si.

        Chunk c starts from the state where chunk c-1 ended, so reaching a far
        chunk generates the ones before it once (their start states are kept).
        """
        key = (si, c)
        hit = self._paths.get(key)
        if hit is not None:
            self._paths.move_to_end(key)
            return hit
        starts = self._chunk_starts[si]
        first = min(c, len(starts) - 1)
        for cc in range(first, c + 1):
            prices, regimes, next_state = self._generate_path(si, cc, *starts[cc])
            if len(starts) == cc + 1:
                starts.append(next_state)
            self._remember(self._paths, (si, cc), (prices, regimes))
        return self._paths[key]

    def _path_draws(self, si: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        gen = _rng(self.seed, _PATH, si, c)
        z = gen.standard_normal(_CHUNK)
        jump_u = gen.random(_CHUNK)
        jump_z = gen.standard_normal(_CHUNK)
        regime_u = _rng(self.seed, _REGIME, si, c).random((2, _CHUNK))
        return z, jump_u, jump_z, regime_u

    def _regimes(self, regime_u: np.ndarray, first: int) -> np.ndarray:
        """Markov chain of regimes; switching is rare so we jump between switches."""
        p_leave = self._regime_probs()
        n_regimes = len(self.REGIMES)
        out = np.empty(_CHUNK, dtype=np.int64)
        pos, regime = 0, first
        while pos < _CHUNK:
            hits = np.flatnonzero(regime_u[0, pos:] < p_leave[regime])
            end = _CHUNK if hits.size == 0 else pos + int(hits[0])
            out[pos:end] = regime
            if end >= _CHUNK:
                break
            out[end] = regime
            others = [r for r in range(n_regimes) if r != regime]
            regime = others[int(regime_u[1, end] * len(others)) % len(others)]
            pos = end + 1
        return out

    def _increments(self, si: int, c: int, first_regime: int) -> tuple[np.ndarray, np.ndarray]:
        spec = self._symbols[si]
        z, jump_u, jump_z, regime_u = self._path_draws(si, c)
        regimes = self._regimes(regime_u, first_regime)
        mult = np.array([m for _, m, _ in self.REGIMES])[regimes]
        dt = self.step_ms / _YEAR_MS
        sigma = spec.volatility * mult
        p_jump = spec.jump_rate_per_day * self.step_ms / 86_400_000
        jumps = np.where(jump_u < p_jump, spec.jump_sd * jump_z, 0.0)
        return -0.5 * sigma**2 * dt + sigma * math.sqrt(dt) * z + jumps, regimes

    def _generate_path(
        self, si: int, c: int, log_start: float, regime: int
    ) -> tuple[np.ndarray, np.ndarray, tuple[float, int]]:
        inc, regimes = self._increments(si, c, regime)
        # step 0 of the chunk is the start state; increment i leads to step i + 1
        logs = log_start + np.concatenate(([0.0], np.cumsum(inc[:-1])))
        next_state = (float(logs[-1] + inc[-1]), int(regimes[-1]))
        return np.exp(logs), regimes, next_state

    def _path_price(self, si: int, t: int) -> float:
        g = (t - self.t0) // self.step_ms
        if g < 0:
            raise ValueError("time before the simulation start t0")
        prices, _ = self._path_chunk(si, g // _CHUNK)
        return float(prices[g % _CHUNK])

    def _path_regime(self, si: int, t: int) -> int:
        g = max(0, (t - self.t0) // self.step_ms)
        _, regimes = self._path_chunk(si, g // _CHUNK)
        return int(regimes[g % _CHUNK])

    def _crash_factor(self, symbol: str, t: int) -> float:
        factor = 1.0
        for event in self._scenarios:
            if isinstance(event, Crash) and event.symbol == symbol:
                factor *= event.factor(t)
        return factor

    # -- internals: venues -------------------------------------------------------------

    def _remember(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._cache_limit:
            cache.popitem(last=False)

    def _phase(self, vi: int) -> int:
        return (vi * 137) % self._venues[vi].interval_ms

    def _latest_delivered_slot(self, vi: int, now: int) -> int:
        spec = self._venues[vi]
        base = now - self.t0 - self._phase(vi) - spec.latency_ms
        if base < 0:
            return -1
        k = base // spec.interval_ms
        # slot k is stamped <= now - latency; it is delivered after its jitter too
        if self._slot_arrival(vi, k) > now:
            k -= 1
        return k

    def _slot_arrival(self, vi: int, k: int) -> int:
        spec = self._venues[vi]
        stamp = self.t0 + self._phase(vi) + k * spec.interval_ms
        jitter = int(self._venue_chunk(vi, 0, k // _CHUNK).jitter[k % _CHUNK]) if spec.jitter_ms else 0
        return stamp + spec.latency_ms + jitter

    def _venue_chunk(self, vi: int, si: int, c: int) -> _VenueChunk:
        key = (vi, si, c)
        hit = self._venue_chunks.get(key)
        if hit is not None:
            self._venue_chunks.move_to_end(key)
            return hit
        spec = self._venues[vi]
        gen = _rng(self.seed, _VENUE, vi, si, c)
        noise = gen.standard_normal(_CHUNK) * (spec.noise_bps / 10_000)
        out_u = gen.random(_CHUNK)
        out_mag = gen.uniform(0.12, 0.30, _CHUNK)
        out_sign = np.where(gen.random(_CHUNK) < 0.5, -1.0, 1.0)
        outlier = np.where(out_u < spec.outlier_rate, out_sign * out_mag, 0.0)
        volume = spec.volume_mean * np.exp(0.5 * gen.standard_normal(_CHUNK) - 0.125)
        jitter = gen.integers(0, max(spec.jitter_ms, 1), _CHUNK)
        stale_src = np.arange(c * _CHUNK, (c + 1) * _CHUNK, dtype=np.int64)
        for start, length in self._stale_starts(vi, si, c - 1) + self._stale_starts(vi, si, c):
            lo = max(start, c * _CHUNK)
            hi = min(start + length, (c + 1) * _CHUNK)
            if lo < hi:
                stale_src[lo - c * _CHUNK : hi - c * _CHUNK] = start
        chunk = _VenueChunk(noise=noise, outlier=outlier, volume=volume, jitter=jitter, stale_src=stale_src)
        self._remember(self._venue_chunks, key, chunk)
        return chunk

    def _stale_starts(self, vi: int, si: int, c: int) -> list[tuple[int, int]]:
        """(first slot, length in slots) of random frozen-feed episodes in chunk c."""
        if c < 0:
            return []
        spec = self._venues[vi]
        gen = _rng(self.seed, _VENUE, vi, si, c, 1)
        u = gen.random(_CHUNK)
        durations = gen.integers(spec.stale_ms[0], spec.stale_ms[1] + 1, _CHUNK)
        idx = np.flatnonzero(u < spec.stale_rate)
        return [
            (c * _CHUNK + int(i), max(1, -(-int(durations[i]) // spec.interval_ms))) for i in idx
        ]

    def _outage_intervals(self, vi: int, c: int) -> _Intervals:
        """Random outage episodes (slot ranges) starting in chunk c of venue vi."""
        key = (vi, c)
        hit = self._outages.get(key)
        if hit is not None:
            return hit
        spec = self._venues[vi]
        gen = _rng(self.seed, _OUTAGE, vi, c)
        u = gen.random(_CHUNK)
        durations = gen.integers(spec.outage_ms[0], spec.outage_ms[1] + 1, _CHUNK)
        idx = np.flatnonzero(u < spec.outage_rate)
        starts = (c * _CHUNK + idx).astype(np.int64)
        lengths = np.maximum(1, -(-durations[idx] // spec.interval_ms)).astype(np.int64)
        hit = _Intervals(starts=starts, ends=starts + lengths)
        self._remember(self._outages, key, hit)
        return hit

    def _venue_down(self, vi: int, k: int) -> bool:
        c = k // _CHUNK
        for cc in (c - 1, c):
            if cc < 0:
                continue
            iv = self._outage_intervals(vi, cc)
            if iv.starts.size and bool(np.any((iv.starts <= k) & (k < iv.ends))):
                return True
        if self._scenarios:
            name = self._venues[vi].name
            stamp = self.t0 + self._phase(vi) + k * self._venues[vi].interval_ms
            return any(isinstance(e, Outage) and e.covers(name, stamp) for e in self._scenarios)
        return False

    def outage_windows(self, venue: str, *, start: int, stop: int) -> list[tuple[int, int]]:
        """Random and forced outages of `venue` overlapping [start, stop), as
        (first, end) quote-stamp times; for tests and for the ops dashboard."""
        vi = self.venues.index(venue)
        spec = self._venues[vi]
        base = self.t0 + self._phase(vi)
        out: list[tuple[int, int]] = []
        first_c = max(0, (start - base) // spec.interval_ms // _CHUNK - 1)
        last_c = max(0, (stop - base) // spec.interval_ms // _CHUNK)
        for c in range(first_c, last_c + 1):
            iv = self._outage_intervals(vi, c)
            for s, e in zip(iv.starts.tolist(), iv.ends.tolist()):
                a, b = base + s * spec.interval_ms, base + e * spec.interval_ms
                if a < stop and b > start:
                    out.append((a, b))
        for ev in self._scenarios:
            if isinstance(ev, Outage) and ev.venue == venue and ev.at < stop and ev.at + ev.duration_ms > start:
                out.append((ev.at, ev.at + ev.duration_ms))
        return sorted(out)

    def _quote(self, vi: int, si: int, k: int) -> VenueQuote | None:
        spec = self._venues[vi]
        sym = self._symbols[si]
        chunk = self._venue_chunk(vi, si, k // _CHUNK)
        src = int(chunk.stale_src[k % _CHUNK])
        stamp = self.t0 + self._phase(vi) + k * spec.interval_ms
        if self._scenarios:
            for ev in self._scenarios:
                if isinstance(ev, StaleFeed) and ev.covers(spec.name, sym.symbol, stamp):
                    first = ev.at - self.t0 - self._phase(vi)
                    src = min(src, -(-first // spec.interval_ms) - 1)
        if src < 0:
            return None  # frozen since before the market opened: nothing to repeat
        if src != k:
            chunk = self._venue_chunk(vi, si, src // _CHUNK)
            stamp = self.t0 + self._phase(vi) + src * spec.interval_ms
        j = src % _CHUNK
        true = self._path_price(si, stamp) * self._crash_factor(sym.symbol, stamp)
        price = true * math.exp(float(chunk.noise[j]))
        outlier = float(chunk.outlier[j])
        if outlier:
            price *= 1.0 + outlier
        for ev in self._scenarios:
            if (
                isinstance(ev, Outlier)
                and ev.venue == spec.name
                and ev.symbol == sym.symbol
                and ev.at <= stamp < ev.at + spec.interval_ms
            ):
                price *= ev.factor
        regime_mult = self.REGIMES[self._path_regime(si, stamp)][1]
        half = spec.spread_bps / 20_000 * regime_mult
        places = sym.price_places
        tick = Decimal(1).scaleb(-places)
        d_price = Decimal(f"{price:.{places}f}")
        bid = Decimal(f"{price * (1 - half):.{places}f}")
        ask = Decimal(f"{price * (1 + half):.{places}f}")
        if ask <= bid:
            ask = bid + tick
        volume = Decimal(f"{float(chunk.volume[j]) * sym.volume_scale * math.sqrt(regime_mult):.3f}")
        return VenueQuote(spec.name, sym.symbol, d_price, volume, bid, ask, stamp)


# ---------------------------------------------------------------------------------
# CSV replay
# ---------------------------------------------------------------------------------


class CsvFormatError(ValueError):
    """A malformed row in a tick file; `path` and `line` say where."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}")


def _parse_timestamp(raw: str) -> int:
    text = raw.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"timestamp {raw!r} is neither epoch milliseconds nor ISO-8601 with an offset"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {raw!r} has no timezone offset")
    return to_ms(parsed)


def _parse_decimal(raw: str, name: str, *, optional: bool = False) -> Decimal | None:
    text = raw.strip()
    if not text:
        if optional:
            return None
        raise ValueError(f"{name} is empty")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{name} {raw!r} is not a decimal number") from None
    if not value.is_finite():
        raise ValueError(f"{name} {raw!r} is not finite")
    return value


class CsvReplay(PriceSource):
    """Replays recorded ticks from one or more CSV files.

    The header must name the columns timestamp, venue, symbol, price, volume,
    bid, ask (any order; bid/ask may be empty). Timestamps are epoch milliseconds
    or ISO-8601 with an offset. A malformed row raises `CsvFormatError` with its
    file and line; with `strict=False` it is skipped and kept in `errors`.
    Values that are well-formed but wrong (a negative price) are loaded: dropping
    them is the index's job, and a replay must reproduce it. Rows are replayed in
    timestamp order (stable for equal timestamps).
    """

    def __init__(self, paths: str | Path | Iterable[str | Path], *, strict: bool = True) -> None:
        if isinstance(paths, str | Path):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("no CSV file given")
        self.errors: list[CsvFormatError] = []
        rows: list[VenueQuote] = []
        for path in self.paths:
            rows.extend(self._load(path, strict, self.errors))
        rows.sort(key=lambda q: q.timestamp)
        self.ticks_loaded: tuple[VenueQuote, ...] = tuple(rows)
        self._series: dict[tuple[str, str], tuple[list[int], list[VenueQuote]]] = {}
        for q in rows:
            stamps, quotes = self._series.setdefault((q.venue, q.symbol), ([], []))
            stamps.append(q.timestamp)
            quotes.append(q)
        self._symbols = tuple(sorted({q.symbol for q in rows}))
        self._venues = tuple(sorted({q.venue for q in rows}))

    @staticmethod
    def _load(path: Path, strict: bool, errors: list[CsvFormatError]) -> list[VenueQuote]:
        name = str(path)
        out: list[VenueQuote] = []
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise CsvFormatError(name, 1, "empty file (no header)") from None
            columns = [h.strip().lower() for h in header]
            missing = [c for c in CSV_COLUMNS if c not in columns]
            if missing:
                raise CsvFormatError(name, 1, f"header lacks column(s) {', '.join(missing)}; got {header}")
            pos = {c: columns.index(c) for c in CSV_COLUMNS}
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                try:
                    if len(row) != len(columns):
                        raise ValueError(f"expected {len(columns)} fields, found {len(row)}")
                    venue = row[pos["venue"]].strip()
                    symbol = row[pos["symbol"]].strip()
                    if not venue:
                        raise ValueError("venue is empty")
                    if not symbol:
                        raise ValueError("symbol is empty")
                    quote = VenueQuote(
                        venue=venue,
                        symbol=symbol,
                        price=_parse_decimal(row[pos["price"]], "price"),
                        volume=_parse_decimal(row[pos["volume"]], "volume"),
                        bid=_parse_decimal(row[pos["bid"]], "bid", optional=True),
                        ask=_parse_decimal(row[pos["ask"]], "ask", optional=True),
                        timestamp=_parse_timestamp(row[pos["timestamp"]]),
                    )
                except ValueError as exc:
                    error = CsvFormatError(name, line, str(exc))
                    if strict:
                        raise error from None
                    errors.append(error)
                    continue
                out.append(quote)
        return out

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    @property
    def venues(self) -> tuple[str, ...]:
        return self._venues

    @property
    def start(self) -> int | None:
        return self.ticks_loaded[0].timestamp if self.ticks_loaded else None

    @property
    def end(self) -> int | None:
        return self.ticks_loaded[-1].timestamp if self.ticks_loaded else None

    def ticks(self) -> Iterator[VenueQuote]:
        """Every recorded tick in replay (timestamp) order."""
        return iter(self.ticks_loaded)

    def quotes_at(self, now: int | datetime, *, symbols: Iterable[str] | None = None) -> list[VenueQuote]:
        now_ms = to_ms(now, name="now")
        wanted = None if symbols is None else set(symbols)
        out: list[VenueQuote] = []
        for (venue, symbol), (stamps, quotes) in self._series.items():
            if wanted is not None and symbol not in wanted:
                continue
            i = bisect.bisect_right(stamps, now_ms)
            if i:
                out.append(quotes[i - 1])
        return out


def write_csv(quotes: Iterable[VenueQuote], path: str | Path) -> int:
    """Record quotes in the CsvReplay format; returns the number of rows."""
    count = 0
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for q in quotes:
            writer.writerow(
                [
                    q.timestamp,
                    q.venue,
                    q.symbol,
                    q.price,
                    q.volume,
                    "" if q.bid is None else q.bid,
                    "" if q.ask is None else q.ask,
                ]
            )
            count += 1
    return count


# ---------------------------------------------------------------------------------
# Live venues (optional, off by default)
# ---------------------------------------------------------------------------------

Fetcher = Callable[[str, str], VenueQuote | None]


class LiveVenues(PriceSource):
    """Interface point for real exchange feeds; off by default, no dependency.

    `fetcher(venue, symbol)` returns the venue's current quote (or None). Without
    a fetcher the adapter would use the optional `ccxt` package; when it is not
    installed, constructing this source raises `SourceUnavailable` with what to
    do. Live quotes are whatever the venue reports now: `quotes_at(now)` does not
    travel in time, and the index's staleness rule still applies to their
    timestamps.
    """

    def __init__(
        self,
        venues: Sequence[str],
        symbols: Sequence[str],
        *,
        fetcher: Fetcher | None = None,
        weights: dict[str, Decimal] | None = None,
    ) -> None:
        if fetcher is None:
            try:
                import ccxt  # type: ignore[import-not-found]  # noqa: F401
            except ImportError:
                raise SourceUnavailable(
                    "price source 'live' needs the optional package 'ccxt', which is not installed "
                    "(it is not a project dependency). Install it yourself or select the 'simulated' "
                    "or 'csv' source."
                ) from None
            fetcher = _ccxt_fetcher()
        self._venues = tuple(venues)
        self._symbols = tuple(symbols)
        self._fetcher = fetcher
        self._weights = weights

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    @property
    def venues(self) -> tuple[str, ...]:
        return self._venues

    def weights(self) -> dict[str, Decimal]:
        return dict(self._weights) if self._weights else super().weights()

    def quotes_at(self, now: int | datetime, *, symbols: Iterable[str] | None = None) -> list[VenueQuote]:
        wanted = self._symbols if symbols is None else tuple(symbols)
        out = []
        for venue in self._venues:
            for symbol in wanted:
                # One venue's failure (a timeout, a malformed ticker) only drops its quote: the
                # index treats the venue as missing, as it does a silent one.
                try:
                    quote = self._fetcher(venue, symbol)
                except Exception:
                    logger.warning("quote of %s on %s failed", symbol, venue, exc_info=True)
                    continue
                if quote is not None:
                    out.append(quote)
        return out


def _ccxt_fetcher() -> Fetcher:  # pragma: no cover - needs the optional library and a network
    import ccxt  # type: ignore[import-not-found]

    clients: dict[str, object] = {}

    def fetch(venue: str, symbol: str) -> VenueQuote | None:
        client = clients.get(venue)
        if client is None:
            client = clients[venue] = getattr(ccxt, venue)()
        ticker = client.fetch_ticker(symbol)  # type: ignore[attr-defined]
        if not ticker or ticker.get("last") is None:
            return None
        return VenueQuote(
            venue=venue,
            symbol=symbol,
            price=to_decimal(str(ticker["last"])),
            volume=to_decimal(str(ticker.get("baseVolume") or 0)),
            bid=None if ticker.get("bid") is None else to_decimal(str(ticker["bid"])),
            ask=None if ticker.get("ask") is None else to_decimal(str(ticker["ask"])),
            timestamp=int(ticker["timestamp"]),
        )

    return fetch


def make_source(kind: str = "simulated", **options) -> PriceSource:
    """Build a price source by name: "simulated" (default), "csv" or "live".

    Options go to the constructor (`paths=` for csv; `venues=`, `symbols=`,
    `fetcher=` for live; `seed=` etc. for simulated, which uses
    `SimulatedVenues.default` unless `symbols`/`venues` specs are given).
    """
    if kind == "simulated":
        if "symbols" in options or "venues" in options:
            return SimulatedVenues(**options)
        return SimulatedVenues.default(**options)
    if kind == "csv":
        return CsvReplay(**options)
    if kind == "live":
        return LiveVenues(**options)
    raise ValueError(f"unknown price source {kind!r}; choose 'simulated', 'csv' or 'live'")
