"""Mark price: index plus a time-weighted basis average, clamped and tick-rounded.

`MarkCalculator` records basis observations (contract price - index) per symbol
and computes mark = index + the average basis of the last 5 minutes, each
observation weighted e^(-age / 300 s), clamped to +/-5% of the index, then rounded
to the contract tick with the engine's one rule (half to even, see
`quotes.quantize_to_tick`); a rounded value that would leave the band is moved to
the nearest tick inside it, so a fresh mark is always within +/-5% of its index.
When no index can be made (unavailable or held) the last mark is repeated
(`FALLBACK`). Smoothing: the anomaly detector's "double smoothing" is an integer
`smoothing` factor k that stretches both the decay constant and the window (k=2:
e^(-age/600 s) over 10 minutes), so a manipulated contract price moves the mark
half as fast; basis history is therefore kept for window x `max_smoothing`.
Weights come from exact Decimal tables of e^(-s/tau) and e^(-ms/tau), so marks are
bit-for-bit reproducible on any machine. `evaluate` computes without publishing
and `accept`/`hold` publish, so a caller (the pipeline) can run the anomaly rules
on the candidate before it becomes the mark; `compute` does both in one call.
"""
from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Context, Decimal
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
def _decay_tables(decay_ms: int, window_ms: int) -> tuple[tuple[Decimal, ...], tuple[Decimal, ...]]:
    """e^(-1000 s / tau) for whole seconds and e^(-m / tau) for the ms remainder.

    e^(-age/tau) = e^(-1000*(age//1000)/tau) * e^(-(age%1000)/tau), so one Decimal
    multiplication gives an exact-to-34-digits weight for any age in the window.
    """
    ctx = _TABLE_CONTEXT
    tau = Decimal(decay_ms)
    seconds = tuple(ctx.exp(ctx.divide(Decimal(-1000 * k), tau)) for k in range(window_ms // 1000 + 1))
    millis = tuple(ctx.exp(ctx.divide(Decimal(-m), tau)) for m in range(1000))
    return seconds, millis


def decay_weight(age_ms: int, decay_ms: int = 300_000, window_ms: int = 300_000) -> Decimal:
    """e^(-age/decay) as the engine computes it (0 <= age <= window)."""
    if not 0 <= age_ms <= window_ms:
        raise ValueError(f"age {age_ms} ms outside the window [0, {window_ms}]")
    seconds, millis = _decay_tables(decay_ms, window_ms)
    return _TABLE_CONTEXT.multiply(seconds[age_ms // 1000], millis[age_ms % 1000])


@dataclass(slots=True)
class _SymbolState:
    basis: deque  # of (timestamp_ms, basis Decimal), oldest first
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
        for t in [*self._ticks.values(), *( [self._default_tick] if self._default_tick is not None else [])]:
            if t <= 0:
                raise ValueError(f"tick must be positive, got {t}")
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
            state = self._state[symbol] = _SymbolState(basis=deque())
        return state

    def record_basis(
        self,
        symbol: str,
        *,
        contract_price: Decimal,
        index_price: Decimal,
        at: int | datetime,
    ) -> Decimal:
        """Store basis = contract price - index at `at`; returns the basis.

        Observations must come in time order; a second observation at the same
        millisecond replaces the first (so re-running a tick does not double it),
        an older one is refused.
        """
        at_ms = to_ms(at, name="at")
        basis = CALC_CONTEXT.subtract(
            to_decimal(contract_price, name="contract_price"), to_decimal(index_price, name="index_price")
        )
        state = self._symbol(symbol)
        history = state.basis
        if history and at_ms < history[-1][0]:
            raise ValueError(
                f"basis observation at {at_ms} is older than the last one ({history[-1][0]}) for {symbol}"
            )
        if history and at_ms == history[-1][0]:
            history.pop()
        history.append((at_ms, basis))
        horizon = at_ms - self.window_ms * self.max_smoothing
        while history and history[0][0] < horizon:
            history.popleft()
        return basis

    def basis_average(self, symbol: str, *, now: int | datetime, smoothing: int = 1) -> tuple[Decimal | None, int]:
        """(time-weighted basis average, observation count) over the window at `now`.

        The average is None when the window holds no observation.
        """
        now_ms = to_ms(now, name="now")
        self._check_smoothing(smoothing)
        state = self._state.get(symbol)
        if state is None or not state.basis:
            return None, 0
        window = self.window_ms * smoothing
        seconds, millis = _decay_tables(self.decay_ms * smoothing, window)
        ctx = CALC_CONTEXT
        weighted = Decimal(0)
        total = Decimal(0)
        count = 0
        for at_ms, basis in reversed(state.basis):
            age = now_ms - at_ms
            if age < 0:
                continue  # observation after `now` (a replayed earlier instant)
            if age > window:
                break
            w = _TABLE_CONTEXT.multiply(seconds[age // 1000], millis[age % 1000])
            weighted = ctx.add(weighted, ctx.multiply(basis, w))
            total = ctx.add(total, w)
            count += 1
        if count == 0:
            return None, 0
        return ctx.divide(weighted, total), count

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
        if mark > upper:
            mark = floor_to_tick(upper, tick)
        elif mark < lower:
            mark = ceil_to_tick(lower, tick)
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
