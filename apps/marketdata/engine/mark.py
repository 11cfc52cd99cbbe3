"""Mark price: index plus a time-weighted basis average, clamped and tick-rounded.

`MarkCalculator` records basis observations (contract price - index) per symbol
and computes mark = index + the average basis of the last 5 minutes, each
observation weighted e^(-age / 300 s), clamped to +/-5% of the index, then rounded
to the contract tick with the engine's one rule (half to even, see
`quotes.quantize_to_tick`); a rounded value that would leave the band is moved to
the nearest tick inside it, so a fresh mark is always within +/-5% of its index (when
the tick is too coarse for any tick to lie in the band, the nearer of the two around it).
When no index can be made (unavailable or held) the last mark is repeated
(`FALLBACK`). Smoothing: the anomaly detector's "double smoothing" is an integer
`smoothing` factor k that stretches both the decay constant and the window (k=2:
e^(-age/600 s) over 10 minutes), so a manipulated contract price moves the mark
half as fast; basis history is therefore kept for window x `max_smoothing`.
Weights come from Decimal tables of e^(-s/tau) and e^(-ms/tau) (no float, so marks
are bit-for-bit reproducible on any machine), and the weighted sums are kept
exactly and updated incrementally, so a mark costs O(1) per tick instead of a pass
over the 5-minute history, and is the same whether it was queried every second or
once (see `_WindowSums`). The basis is kept to 12 decimals. `evaluate` computes
without publishing and `accept`/`hold` publish, so a caller (the pipeline) can run
the anomaly rules on the candidate before it becomes the mark; `compute` does both.
"""
from __future__ import annotations

import enum
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow
from functools import lru_cache

from .index import IndexResult
from .quotes import (
    CALC_CONTEXT,
    ceil_to_tick,
    floor_to_tick,
    quantize_to_tick,
    to_decimal,
    to_ms,
)

__all__ = ["MarkCalculator", "MarkResult", "MarkStatus", "decay_weight"]

_ONE = Decimal(1)
_TABLE_CONTEXT = Context(prec=34)
# Running basis sums: exact (Inexact is trapped as an internal assertion), so adding
# and removing observations is reversible. Terms have at most 30 + 12 integer and
# fractional basis digits times 32 weight decimals, far below 96 digits.
_SUM_CONTEXT = Context(prec=96, traps=[InvalidOperation, Inexact, Overflow, DivisionByZero])
_WEIGHT_QUANTUM = Decimal("1e-32")
_BASIS_QUANTUM = Decimal("1e-12")
_MAX_BASIS = Decimal("1e30")


class MarkStatus(str, enum.Enum):
    FRESH = "fresh"  # computed from a fresh index (published, or a candidate)
    FALLBACK = "fallback"  # no index could be made: the last mark is repeated
    PAUSED = "paused"  # updates paused by the anomaly detector: last mark repeated
    UNAVAILABLE = "unavailable"  # no index and no previous mark


@dataclass(frozen=True, slots=True)
class MarkResult:
    """A mark for one symbol at one instant and how it was obtained.

    `price` is the mark to publish (the last mark for FALLBACK/PAUSED; None when
    nothing can be published). `candidate` is what the formula gave at this
    instant (None without an index), kept for audit even when not published.
    `raw` is index + basis average before clamping, `clamped` whether the band
    cut it, `observations` how many basis points were in the window.
    """

    symbol: str
    price: Decimal | None
    status: MarkStatus
    computed_at: int
    candidate: Decimal | None = None
    index: Decimal | None = None
    basis_average: Decimal | None = None
    raw: Decimal | None = None
    clamped: bool = False
    observations: int = 0
    smoothing: int = 1
    reason: str | None = None

    @property
    def is_fresh(self) -> bool:
        return self.status is MarkStatus.FRESH

    def to_audit(self) -> dict:
        def s(v: Decimal | None) -> str | None:
            return None if v is None else str(v)

        return {
            "symbol": self.symbol,
            "price": s(self.price),
            "status": self.status.value,
            "computed_at": self.computed_at,
            "candidate": s(self.candidate),
            "index": s(self.index),
            "basis_average": s(self.basis_average),
            "raw": s(self.raw),
            "clamped": self.clamped,
            "observations": self.observations,
            "smoothing": self.smoothing,
            "reason": self.reason,
        }


@lru_cache(maxsize=32)
def _decay_tables(decay_ms: int, max_age_ms: int) -> tuple[tuple[Decimal, ...], tuple[Decimal, ...]]:
    """e^(-1000 s / tau) for whole seconds and e^(-m / tau) for the ms remainder.

    e^(-age/tau) = e^(-1000*(age//1000)/tau) * e^(-(age%1000)/tau), so one Decimal
    multiplication gives a weight correct to ~33 digits for any age up to
    `max_age_ms`, identical on every machine (libmpdec's exp is correctly rounded).
    """
    ctx = _TABLE_CONTEXT
    tau = Decimal(decay_ms)
    seconds = tuple(ctx.exp(ctx.divide(Decimal(-1000 * k), tau)) for k in range(max_age_ms // 1000 + 1))
    millis = tuple(ctx.exp(ctx.divide(Decimal(-m), tau)) for m in range(1000))
    return seconds, millis


def decay_weight(age_ms: int, decay_ms: int = 300_000, window_ms: int = 300_000) -> Decimal:
    """e^(-age/decay) as the engine computes it (0 <= age <= window)."""
    if not 0 <= age_ms <= window_ms:
        raise ValueError(f"age {age_ms} ms outside the window [0, {window_ms}]")
    seconds, millis = _decay_tables(decay_ms, window_ms)
    return _TABLE_CONTEXT.multiply(seconds[age_ms // 1000], millis[age_ms % 1000])


def _anchored_weight(tables: tuple[tuple[Decimal, ...], tuple[Decimal, ...]], age_ms: int) -> Decimal:
    """e^(-age/tau) rounded to a fixed 32 decimals, so running sums stay exact."""
    seconds, millis = tables
    return _TABLE_CONTEXT.quantize(
        _TABLE_CONTEXT.multiply(seconds[age_ms // 1000], millis[age_ms % 1000]), _WEIGHT_QUANTUM
    )


@dataclass(slots=True)
class _WindowSums:
    """Exact running sums of one smoothing factor's window at instant `now`.

    Weights are taken relative to `ref`, the end of the decay period containing
    `now` (w_i = e^(-(ref - t_i)/tau)); the common factor e^(-(now - ref)/tau)
    cancels in the average, so it equals the e^(-age/tau) average while each term
    stays fixed as time passes. Terms are fixed-point and the sums exact, so adding
    and removing observations gives exactly the from-scratch result for the same
    `ref`: the mark does not depend on how often it was queried.
    """

    ref: int
    now: int
    lo: int  # sequence number of the oldest included observation
    hi: int  # one past the newest included observation
    weights: Decimal
    weighted: Decimal


@dataclass(slots=True)
class _SymbolState:
    times: list[int] = field(default_factory=list)  # observation times, ascending
    values: list[Decimal] = field(default_factory=list)  # basis at those times
    offset: int = 0  # sequence number of times[0]
    sums: dict[int, _WindowSums] = field(default_factory=dict)  # per smoothing factor
    last_mark: Decimal | None = None
    last_at: int | None = None


class MarkCalculator:
    """Mark price per symbol from the index and recorded basis observations.

    `tick` is the contract tick, one Decimal for every symbol or a mapping
    symbol -> tick (a symbol missing from the mapping is an error). `band` is the
    clamp around the index (5%), `window_ms` the basis window (5 min), `decay_ms`
    the e-folding time of the weights (300 s), `max_smoothing` the largest
    smoothing factor a caller may ask for (history is kept for that long).
    """

    def __init__(
        self,
        *,
        tick: Decimal | Mapping[str, Decimal],
        band: Decimal | str = Decimal("0.05"),
        window_ms: int = 300_000,
        decay_ms: int = 300_000,
        max_smoothing: int = 4,
    ) -> None:
        if isinstance(tick, Mapping):
            self._ticks = {sym: to_decimal(t, name=f"tick of {sym}") for sym, t in tick.items()}
            self._default_tick = None
        else:
            self._ticks = {}
            self._default_tick = to_decimal(tick, name="tick")
        configured = list(self._ticks.values())
        if self._default_tick is not None:
            configured.append(self._default_tick)
        if any(t <= 0 for t in configured):
            raise ValueError(f"ticks must be positive, got {configured}")
        self.band = to_decimal(band, name="band")
        if not 0 < self.band < 1:
            raise ValueError("band must be in (0, 1)")
        if window_ms < 1000 or decay_ms <= 0 or max_smoothing < 1:
            raise ValueError("window_ms >= 1000, decay_ms > 0 and max_smoothing >= 1 are required")
        self.window_ms = window_ms
        self.decay_ms = decay_ms
        self.max_smoothing = max_smoothing
        self._state: dict[str, _SymbolState] = {}

    # -- state --------------------------------------------------------------------

    def tick_for(self, symbol: str) -> Decimal:
        tick = self._ticks.get(symbol, self._default_tick)
        if tick is None:
            raise KeyError(f"no tick configured for {symbol}")
        return tick

    def last_mark(self, symbol: str) -> Decimal | None:
        state = self._state.get(symbol)
        return None if state is None else state.last_mark

    def seed(self, symbol: str, mark: Decimal, *, at: int | datetime) -> None:
        """Set the last mark, e.g. from the database after a restart."""
        state = self._symbol(symbol)
        state.last_mark = to_decimal(mark, name="mark")
        state.last_at = to_ms(at, name="at")

    def _symbol(self, symbol: str) -> _SymbolState:
        state = self._state.get(symbol)
        if state is None:
            state = self._state[symbol] = _SymbolState()
        return state

    def _factor(self, smoothing: int) -> tuple[int, int, tuple[tuple[Decimal, ...], tuple[Decimal, ...]]]:
        """(decay, window, weight tables covering ages up to decay + window)."""
        decay = self.decay_ms * smoothing
        window = self.window_ms * smoothing
        return decay, window, _decay_tables(decay, decay + window)

    def record_basis(
        self,
        symbol: str,
        *,
        contract_price: Decimal,
        index_price: Decimal,
        at: int | datetime,
    ) -> Decimal:
        """Store basis = contract price - index at `at`; returns the basis.

        The basis is kept to 12 decimal places. Observations must come in time
        order; a second observation at the same millisecond replaces the first (so
        re-running a tick does not double it), an older one is refused. History is
        kept for window x max_smoothing.
        """
        at_ms = to_ms(at, name="at")
        basis = CALC_CONTEXT.quantize(
            CALC_CONTEXT.subtract(
                to_decimal(contract_price, name="contract_price"), to_decimal(index_price, name="index_price")
            ),
            _BASIS_QUANTUM,
        )
        if abs(basis) >= _MAX_BASIS:
            raise ValueError(f"basis {basis} is not a plausible price difference")
        state = self._symbol(symbol)
        times, values = state.times, state.values
        if times and at_ms < times[-1]:
            raise ValueError(f"basis observation at {at_ms} is older than the last one ({times[-1]}) for {symbol}")
        if times and at_ms == times[-1]:
            seq = state.offset + len(times) - 1
            old = values[-1]
            values[-1] = basis
            for factor, sums in state.sums.items():
                if sums.lo <= seq < sums.hi:
                    decay, _, tables = self._factor(factor)
                    w = _anchored_weight(tables, sums.ref - at_ms)
                    sums.weighted = _SUM_CONTEXT.add(
                        sums.weighted, _SUM_CONTEXT.multiply(_SUM_CONTEXT.subtract(basis, old), w)
                    )
        else:
            times.append(at_ms)
            values.append(basis)
        expired = bisect_left(times, at_ms - self.window_ms * self.max_smoothing)
        if expired:
            del times[:expired]
            del values[:expired]
            state.offset += expired
            for factor in [f for f, sums in state.sums.items() if sums.lo < state.offset]:
                del state.sums[factor]  # rebuilt on next use
        return basis

    def basis_average(self, symbol: str, *, now: int | datetime, smoothing: int = 1) -> tuple[Decimal | None, int]:
        """(time-weighted basis average, observation count) over the window at `now`.

        The window is [now - window, now]; each observation weighs
        e^(-(now - t)/decay). The average is None when the window is empty.
        Amortized O(1) per call when `now` moves forward.
        """
        now_ms = to_ms(now, name="now")
        self._check_smoothing(smoothing)
        state = self._state.get(symbol)
        if state is None or not state.times:
            return None, 0
        decay, window, tables = self._factor(smoothing)
        ref = (now_ms // decay + 1) * decay
        cutoff = now_ms - window
        times, values, offset = state.times, state.values, state.offset
        sums = state.sums.get(smoothing)
        end = offset + len(times)
        if (
            sums is None
            or sums.ref != ref
            or now_ms < sums.now
            or (sums.hi < end and times[sums.hi - offset] <= now_ms and times[sums.hi - offset] < cutoff)
        ):
            lo = offset + bisect_left(times, cutoff)
            hi = offset + bisect_right(times, now_ms)
            sums = _WindowSums(ref=ref, now=now_ms, lo=lo, hi=lo, weights=Decimal(0), weighted=Decimal(0))
            state.sums[smoothing] = sums
        else:
            sums.now = now_ms
            hi = offset + bisect_right(times, now_ms, sums.hi - offset)
        ctx = _SUM_CONTEXT
        while sums.hi < hi:  # add observations that entered the window
            i = sums.hi - offset
            w = _anchored_weight(tables, ref - times[i])
            sums.weights = ctx.add(sums.weights, w)
            sums.weighted = ctx.add(sums.weighted, ctx.multiply(values[i], w))
            sums.hi += 1
        while sums.lo < sums.hi and times[sums.lo - offset] < cutoff:  # remove expired ones
            i = sums.lo - offset
            w = _anchored_weight(tables, ref - times[i])
            sums.weights = ctx.subtract(sums.weights, w)
            sums.weighted = ctx.subtract(sums.weighted, ctx.multiply(values[i], w))
            sums.lo += 1
        count = sums.hi - sums.lo
        if count == 0:
            return None, 0
        return CALC_CONTEXT.divide(sums.weighted, sums.weights), count

    def _check_smoothing(self, smoothing: int) -> None:
        if not isinstance(smoothing, int) or not 1 <= smoothing <= self.max_smoothing:
            raise ValueError(f"smoothing must be an int in [1, {self.max_smoothing}], got {smoothing!r}")

    # -- computation --------------------------------------------------------------

    def evaluate(
        self,
        symbol: str,
        *,
        index: IndexResult | Decimal | None,
        now: int | datetime,
        contract_price: Decimal | None = None,
        smoothing: int = 1,
    ) -> MarkResult:
        """Compute the mark at `now` without publishing it.

        Records the basis observation (contract price - index) when both exist:
        the observation is market data whether or not this mark is published.
        An `IndexResult` that is HELD or UNAVAILABLE counts as "no index".
        Returns a FRESH result whose `price` is the candidate, or FALLBACK /
        UNAVAILABLE with the last mark.
        """
        now_ms = to_ms(now, name="now")
        self._check_smoothing(smoothing)
        tick = self.tick_for(symbol)
        index_price = _index_price(index)
        state = self._symbol(symbol)
        if index_price is None:
            reason = "no index" if not isinstance(index, IndexResult) else f"index {index.status.value}: {index.reason}"
            return MarkResult(
                symbol=symbol,
                price=state.last_mark,
                status=MarkStatus.FALLBACK if state.last_mark is not None else MarkStatus.UNAVAILABLE,
                computed_at=now_ms,
                smoothing=smoothing,
                reason=reason,
            )
        if contract_price is not None:
            self.record_basis(symbol, contract_price=contract_price, index_price=index_price, at=now_ms)
        basis_avg, count = self.basis_average(symbol, now=now_ms, smoothing=smoothing)
        ctx = CALC_CONTEXT
        raw = index_price if basis_avg is None else ctx.add(index_price, basis_avg)
        lower = ctx.multiply(index_price, ctx.subtract(_ONE, self.band))
        upper = ctx.multiply(index_price, ctx.add(_ONE, self.band))
        clamped = raw < lower or raw > upper
        bounded = min(max(raw, lower), upper)
        mark = quantize_to_tick(bounded, tick)
        if not lower <= mark <= upper:
            below, above = floor_to_tick(upper, tick), ceil_to_tick(lower, tick)
            if below >= lower:  # a tick inside the band: the one nearest the rounded value
                mark = below if mark > upper else above
            else:  # a tick too coarse for the band: the nearer of the two around it, never zero
                mark = min((p for p in (below, above) if p > 0), key=lambda p: abs(p - index_price))
        return MarkResult(
            symbol=symbol,
            price=mark,
            status=MarkStatus.FRESH,
            computed_at=now_ms,
            candidate=mark,
            index=index_price,
            basis_average=basis_avg,
            raw=raw,
            clamped=clamped,
            observations=count,
            smoothing=smoothing,
        )

    def accept(self, result: MarkResult) -> MarkResult:
        """Publish a FRESH result from `evaluate` as the symbol's last mark."""
        if result.status is MarkStatus.FRESH and result.price is not None:
            state = self._symbol(result.symbol)
            if state.last_at is None or result.computed_at >= state.last_at:
                state.last_mark = result.price
                state.last_at = result.computed_at
        return result

    def hold(self, result: MarkResult, *, reason: str) -> MarkResult:
        """Turn an evaluated result into a PAUSED one that repeats the last mark."""
        return replace(
            result,
            price=self.last_mark(result.symbol),
            status=MarkStatus.PAUSED,
            reason=reason,
        )

    def compute(
        self,
        symbol: str,
        *,
        index: IndexResult | Decimal | None,
        now: int | datetime,
        contract_price: Decimal | None = None,
        smoothing: int = 1,
        paused: bool = False,
    ) -> MarkResult:
        """`evaluate` then publish (FRESH) or repeat the last mark (`paused`)."""
        result = self.evaluate(
            symbol, index=index, now=now, contract_price=contract_price, smoothing=smoothing
        )
        if paused and result.status is MarkStatus.FRESH:
            return self.hold(result, reason="mark updates paused")
        return self.accept(result)


def _index_price(index: IndexResult | Decimal | None) -> Decimal | None:
    if index is None:
        return None
    if isinstance(index, IndexResult):
        return index.price if index.is_fresh else None
    price = to_decimal(index, name="index")
    if price <= 0:
        raise ValueError(f"index must be positive, got {price}")
    return price
