"""Index price: the weighted average of spot venue quotes, with an audit trail.

`IndexCalculator` turns the quotes available at an instant into one index price
per symbol. Each venue's weight is its configured weight x (1 + min(2,
volume/1000)), so liquid venues count up to three times their base weight. A quote
is dropped, with the reason recorded, when it is for another symbol or an
unconfigured venue, its price is not positive, its volume is negative, its
timestamp is in the future or older than `max_age_ms`, another quote of the same
venue is newer, or it is more than 10% from the last index (only once an index
exists). A fresh index is reused for 5 s unless the caller forces a recomputation.
When too few quotes survive, the last good index is held and the result says so
(`status=HELD`, `alert=True`) so the caller can raise an alert instead of
publishing a made-up number. Every `IndexResult` lists the quotes used (with their
weights) and dropped (with the reason), so it can be stored as the audit record of
the published price. The calculator keeps per-symbol state (last index, cache)
in memory only; it never reads the clock: `now` is always an argument.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from .quotes import CALC_CONTEXT, DEFAULT_PRICE_QUANTUM, VenueQuote, dsum, to_decimal, to_ms

__all__ = [
    "DropReason",
    "DroppedQuote",
    "IndexCalculator",
    "IndexResult",
    "IndexStatus",
    "UsedQuote",
]

_ONE = Decimal(1)


class DropReason(str, enum.Enum):
    """Why a quote did not enter the index (stored as the string value)."""

    SYMBOL_MISMATCH = "symbol_mismatch"
    UNKNOWN_VENUE = "unknown_venue"
    NON_POSITIVE_PRICE = "non_positive_price"
    NEGATIVE_VOLUME = "negative_volume"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE = "stale"
    SUPERSEDED = "superseded"
    DEVIATION = "deviation"
    TOO_FEW_SOURCES = "too_few_sources"  # valid, but fewer than min_sources venues were


class IndexStatus(str, enum.Enum):
    FRESH = "fresh"  # computed from enough valid quotes
    HELD = "held"  # too few valid quotes: the last good index is repeated
    UNAVAILABLE = "unavailable"  # too few valid quotes and no index ever computed


@dataclass(frozen=True, slots=True)
class UsedQuote:
    quote: VenueQuote
    weight: Decimal  # configured weight x (1 + min(cap, volume / unit))


@dataclass(frozen=True, slots=True)
class DroppedQuote:
    quote: VenueQuote
    reason: DropReason
    detail: str


@dataclass(frozen=True, slots=True)
class IndexResult:
    """The index for one symbol at one instant, with what went into it.

    `price` is the index (the held last good value when `status` is HELD, None
    when UNAVAILABLE). `computed_at` is the `now` of the computation; `cached` is
    True when this object is a reuse of an earlier computation within the cache
    window (then `computed_at` is the earlier time). `reference` is the last index
    the deviation rule compared against. `alert` is True when the caller should
    raise an alert (no fresh index could be made).
    """

    symbol: str
    price: Decimal | None
    status: IndexStatus
    computed_at: int
    used: tuple[UsedQuote, ...]
    dropped: tuple[DroppedQuote, ...]
    reference: Decimal | None
    reason: str | None = None
    held_since: int | None = None
    cached: bool = False

    @property
    def alert(self) -> bool:
        return self.status is not IndexStatus.FRESH

    @property
    def is_fresh(self) -> bool:
        return self.status is IndexStatus.FRESH

    @property
    def total_volume(self) -> Decimal:
        return dsum(u.quote.volume for u in self.used)

    def to_audit(self) -> dict:
        """JSON-ready dict (decimals as strings) to store beside the price."""
        return {
            "symbol": self.symbol,
            "price": None if self.price is None else str(self.price),
            "status": self.status.value,
            "computed_at": self.computed_at,
            "reference": None if self.reference is None else str(self.reference),
            "reason": self.reason,
            "held_since": self.held_since,
            "used": [dict(u.quote.to_audit(), weight=str(u.weight)) for u in self.used],
            "dropped": [
                dict(d.quote.to_audit(), reason=d.reason.value, detail=d.detail) for d in self.dropped
            ],
        }


@dataclass(slots=True)
class _SymbolState:
    last_price: Decimal | None = None
    last_at: int | None = None
    cached: IndexResult | None = None
    held_since: int | None = None


class IndexCalculator:
    """Per-symbol index computation with the validity rules, cache and hold.

    `weights` maps venue name -> configured weight (Decimal/int/str); quotes from
    venues not in it are dropped. Defaults follow design section 3: 10% deviation
    limit, 5 s cache, volume weight capped at 2 per 1000 units. `quantum` is the
    precision the index is published at (half-even); `min_sources` is how many
    valid venues a fresh index needs.
    """

    def __init__(
        self,
        weights: Mapping[str, Decimal | int | str],
        *,
        max_age_ms: int = 10_000,
        max_deviation: Decimal | str = Decimal("0.10"),
        cache_ms: int = 5_000,
        volume_unit: Decimal | int | str = 1000,
        volume_cap: Decimal | int | str = 2,
        min_sources: int = 1,
        max_future_ms: int = 1_000,
        quantum: Decimal | None = DEFAULT_PRICE_QUANTUM,
    ) -> None:
        self.weights: dict[str, Decimal] = {}
        for venue, weight in weights.items():
            w = to_decimal(weight, name=f"weight of {venue}")
            if w <= 0:
                raise ValueError(f"weight of {venue} must be positive, got {w}")
            self.weights[venue] = w
        if not self.weights:
            raise ValueError("at least one venue weight is required")
        if max_age_ms <= 0 or cache_ms < 0 or max_future_ms < 0:
            raise ValueError("max_age_ms must be positive; cache_ms and max_future_ms non-negative")
        if min_sources < 1:
            raise ValueError("min_sources must be at least 1")
        self.max_age_ms = max_age_ms
        self.max_deviation = to_decimal(max_deviation, name="max_deviation")
        self.cache_ms = cache_ms
        self.volume_unit = to_decimal(volume_unit, name="volume_unit")
        self.volume_cap = to_decimal(volume_cap, name="volume_cap")
        if self.volume_unit <= 0 or self.volume_cap < 0 or self.max_deviation <= 0:
            raise ValueError("volume_unit and max_deviation must be positive, volume_cap non-negative")
        self.min_sources = min_sources
        self.max_future_ms = max_future_ms
        self.quantum = quantum
        self._state: dict[str, _SymbolState] = {}

    # -- state --------------------------------------------------------------------

    def last_index(self, symbol: str) -> Decimal | None:
        """The last good (fresh) index of `symbol`, the reference for deviations."""
        state = self._state.get(symbol)
        return None if state is None else state.last_price

    def seed(self, symbol: str, price: Decimal, *, at: int | datetime) -> None:
        """Set the last good index, e.g. from the database after a restart."""
        state = self._state.setdefault(symbol, _SymbolState())
        state.last_price = to_decimal(price, name="price")
        state.last_at = to_ms(at, name="at")
        state.cached = None

    def reset_reference(self, symbol: str) -> None:
        """Ops action: forget the last index so the deviation rule stops applying.

        After a real gap of more than 10% every quote is dropped as a deviation and
        the index holds; once an operator has checked the market, this lets the
        next computation start again from the venues alone.
        """
        self._state.pop(symbol, None)

    def weight_for(self, quote: VenueQuote) -> Decimal:
        """configured weight x (1 + min(cap, volume / unit)); exact in Decimal."""
        ctx = CALC_CONTEXT
        volume_factor = min(self.volume_cap, ctx.divide(quote.volume, self.volume_unit))
        return ctx.multiply(self.weights[quote.venue], ctx.add(_ONE, volume_factor))

    # -- computation --------------------------------------------------------------

    def compute(
        self,
        symbol: str,
        quotes: Iterable[VenueQuote],
        *,
        now: int | datetime,
        force: bool = False,
    ) -> IndexResult:
        """Index of `symbol` at `now` from the quotes available at that time.

        Within `cache_ms` of the last fresh computation the earlier result is
        returned again (with `cached=True`) unless `force` is set. Held and
        unavailable results are never cached, so the index recovers on the first
        call after valid quotes come back.
        """
        now_ms = to_ms(now, name="now")
        state = self._state.get(symbol)
        if state is None:
            state = self._state[symbol] = _SymbolState()
        cached = state.cached
        if (
            cached is not None
            and not force
            and 0 <= now_ms - cached.computed_at < self.cache_ms
        ):
            return cached if cached.cached else replace(cached, cached=True)

        reference = state.last_price
        used, dropped = self._screen(symbol, quotes, now_ms, reference)

        if len(used) < self.min_sources:
            if used:
                # Not enough venues for a trustworthy index: report them as unused.
                dropped.extend(
                    DroppedQuote(u.quote, DropReason.TOO_FEW_SOURCES, f"need {self.min_sources} valid venues")
                    for u in used
                )
                used = []
            if state.held_since is None:
                state.held_since = now_ms
            state.cached = None
            reason = _hold_reason(dropped, self.min_sources)
            return IndexResult(
                symbol=symbol,
                price=reference,
                status=IndexStatus.HELD if reference is not None else IndexStatus.UNAVAILABLE,
                computed_at=now_ms,
                used=(),
                dropped=tuple(dropped),
                reference=reference,
                reason=reason,
                held_since=state.held_since,
            )

        ctx = CALC_CONTEXT
        total_weight = Decimal(0)
        weighted = Decimal(0)
        for u in used:
            total_weight = ctx.add(total_weight, u.weight)
            weighted = ctx.add(weighted, ctx.multiply(u.quote.price, u.weight))
        price = ctx.divide(weighted, total_weight)
        if self.quantum is not None:
            price = ctx.quantize(price, self.quantum)

        result = IndexResult(
            symbol=symbol,
            price=price,
            status=IndexStatus.FRESH,
            computed_at=now_ms,
            used=tuple(used),
            dropped=tuple(dropped),
            reference=reference,
        )
        state.last_price = price
        state.last_at = now_ms
        state.held_since = None
        state.cached = result
        return result

    def _screen(
        self,
        symbol: str,
        quotes: Iterable[VenueQuote],
        now_ms: int,
        reference: Decimal | None,
    ) -> tuple[list[UsedQuote], list[DroppedQuote]]:
        """Apply the validity rules in a fixed order; first failing rule is the reason."""
        dropped: list[DroppedQuote] = []
        latest: dict[str, VenueQuote] = {}
        for q in quotes:
            if q.symbol != symbol:
                dropped.append(DroppedQuote(q, DropReason.SYMBOL_MISMATCH, f"quote is for {q.symbol}"))
            elif q.venue not in self.weights:
                dropped.append(DroppedQuote(q, DropReason.UNKNOWN_VENUE, f"venue {q.venue} has no weight"))
            elif q.price <= 0:
                dropped.append(DroppedQuote(q, DropReason.NON_POSITIVE_PRICE, f"price {q.price}"))
            elif q.volume < 0:
                dropped.append(DroppedQuote(q, DropReason.NEGATIVE_VOLUME, f"volume {q.volume}"))
            elif q.timestamp - now_ms > self.max_future_ms:
                dropped.append(
                    DroppedQuote(q, DropReason.FUTURE_TIMESTAMP, f"{q.timestamp - now_ms} ms ahead of now")
                )
            elif now_ms - q.timestamp > self.max_age_ms:
                dropped.append(
                    DroppedQuote(
                        q, DropReason.STALE, f"age {now_ms - q.timestamp} ms > {self.max_age_ms} ms"
                    )
                )
            else:
                previous = latest.get(q.venue)
                if previous is None:
                    latest[q.venue] = q
                elif q.timestamp > previous.timestamp:
                    latest[q.venue] = q
                    dropped.append(DroppedQuote(previous, DropReason.SUPERSEDED, "newer quote from venue"))
                else:
                    dropped.append(DroppedQuote(q, DropReason.SUPERSEDED, "newer quote from venue"))

        used: list[UsedQuote] = []
        ctx = CALC_CONTEXT
        limit = None if reference is None else ctx.multiply(reference, self.max_deviation)
        for q in latest.values():
            if limit is not None and abs(ctx.subtract(q.price, reference)) > limit:
                deviation = ctx.divide(abs(ctx.subtract(q.price, reference)), reference)
                dropped.append(
                    DroppedQuote(
                        q,
                        DropReason.DEVIATION,
                        f"{deviation:.4%} from last index {reference} (limit {self.max_deviation:%})",
                    )
                )
            else:
                used.append(UsedQuote(q, self.weight_for(q)))
        if not used:
            moved = self._market_moved([d.quote for d in dropped if d.reason == DropReason.DEVIATION])
            if moved:
                dropped = [d for d in dropped if d.quote not in moved]
                used = [UsedQuote(q, self.weight_for(q)) for q in moved]
        return used, dropped

    def _market_moved(self, deviating: list[VenueQuote]) -> list[VenueQuote]:
        """The deviating quotes, when they show a real move rather than bad venues: every valid
        quote deviates, at least two venues (and `min_sources`) quote, and they agree with each
        other within the deviation limit of their median. Without this the index would hold at
        the old price for good after a gap of more than the limit (the reference is the last
        index, which only a used quote moves); the anomaly detector still sees the jump."""
        if len(deviating) < max(2, self.min_sources):
            return []
        prices = sorted(q.price for q in deviating)
        middle = len(prices) // 2
        median = prices[middle] if len(prices) % 2 else (prices[middle - 1] + prices[middle]) / 2
        limit = CALC_CONTEXT.multiply(median, self.max_deviation)
        return deviating if prices[-1] - median <= limit and median - prices[0] <= limit else []


def _hold_reason(dropped: list[DroppedQuote], min_sources: int) -> str:
    counts: dict[str, int] = {}
    for d in dropped:
        counts[d.reason.value] = counts.get(d.reason.value, 0) + 1
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no quotes"
    need = "no valid quote" if min_sources == 1 else f"fewer than {min_sources} valid sources"
    return f"{need} ({detail})"
