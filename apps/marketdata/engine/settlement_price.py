"""Delivery settlement price: the cleaned mean of the index over the final window.

`SettlementPriceCalculator.calculate` takes the source quotes recorded during the
window before delivery (default 1 hour, a contract setting; the reference exchange
uses 30 minutes) and groups them into minutes, half-open [start, start+60 s). In
each minute, prices more than 5% from that minute's median are dropped, and the
minute's index is the average of the remaining prices weighted by source weight x
volume. The settlement price is the plain mean of the minute indexes, so every
minute of the window counts once (a single heavy minute cannot dominate), rounded
half-even to the tick (or 8 places). The result carries the audit detail: every
minute with its median, value, kept and dropped quotes. When no minute has a
valid value the result is `NO_PRICE` with the reason; a price is never invented.
This differs from the seed sketch, which pooled all cleaned points of the hour
into one volume-weighted average and raised an exception when data was missing.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .quotes import (
    CALC_CONTEXT,
    DEFAULT_PRICE_QUANTUM,
    VenueQuote,
    dsum,
    median,
    quantize_to_tick,
    to_decimal,
    to_ms,
)

__all__ = [
    "MinuteSample",
    "SampleDrop",
    "SettlementPriceCalculator",
    "SettlementPriceResult",
    "SettlementStatus",
]

MINUTE_MS = 60_000


class SettlementStatus(str, enum.Enum):
    OK = "ok"
    NO_PRICE = "no_price"


@dataclass(frozen=True, slots=True)
class SampleDrop:
    quote: VenueQuote
    reason: str  # "unknown_venue", "non_positive_price", "negative_volume", "outlier"
    detail: str


@dataclass(frozen=True, slots=True)
class MinuteSample:
    """One minute of the window: its median, value and what fed it.

    `value` is None when the minute had no usable quote (`reason` says why).
    `kept` pairs each kept quote with its weight (source weight x volume).
    """

    start: int
    median: Decimal | None
    value: Decimal | None
    kept: tuple[tuple[VenueQuote, Decimal], ...]
    dropped: tuple[SampleDrop, ...]
    reason: str | None = None

    def to_audit(self) -> dict:
        return {
            "start": self.start,
            "median": None if self.median is None else str(self.median),
            "value": None if self.value is None else str(self.value),
            "reason": self.reason,
            "kept": [dict(q.to_audit(), weight=str(w)) for q, w in self.kept],
            "dropped": [dict(d.quote.to_audit(), reason=d.reason, detail=d.detail) for d in self.dropped],
        }


@dataclass(frozen=True, slots=True)
class SettlementPriceResult:
    """The settlement price of a delivery contract, or NO_PRICE with the reason.

    `price` is rounded to the tick (or 8 places), `unrounded` is the exact mean;
    `minutes` lists every minute of the window in order, including empty ones.
    """

    symbol: str
    status: SettlementStatus
    price: Decimal | None
    unrounded: Decimal | None
    window_start: int
    window_end: int
    minutes: tuple[MinuteSample, ...]
    reason: str | None = None

    @property
    def valid_minutes(self) -> int:
        return sum(1 for m in self.minutes if m.value is not None)

    def to_audit(self) -> dict:
        return {
            "symbol": self.symbol,
            "status": self.status.value,
            "price": None if self.price is None else str(self.price),
            "unrounded": None if self.unrounded is None else str(self.unrounded),
            "window_start": self.window_start,
            "window_end": self.window_end,
            "valid_minutes": self.valid_minutes,
            "reason": self.reason,
            "minutes": [m.to_audit() for m in self.minutes],
        }


class SettlementPriceCalculator:
    """Settlement price from recorded source quotes; see the module docstring.

    `weights` maps source (venue) -> weight; quotes from other sources are
    dropped. `tick`: round the price to the contract tick (else to 8 places).
    `min_valid_minutes`: fewer valid minutes than this is NO_PRICE.
    """

    def __init__(
        self,
        weights: Mapping[str, Decimal | int | str],
        *,
        window_ms: int = 3_600_000,
        outlier_threshold: Decimal | str = Decimal("0.05"),
        tick: Decimal | None = None,
        min_valid_minutes: int = 1,
    ) -> None:
        self.weights = {v: to_decimal(w, name=f"weight of {v}") for v, w in weights.items()}
        if not self.weights or any(w <= 0 for w in self.weights.values()):
            raise ValueError("weights must be non-empty and positive")
        if window_ms <= 0 or window_ms % MINUTE_MS:
            raise ValueError("window_ms must be a positive whole number of minutes")
        self.window_ms = window_ms
        self.outlier_threshold = to_decimal(outlier_threshold, name="outlier_threshold")
        self.tick = tick
        if min_valid_minutes < 1:
            raise ValueError("min_valid_minutes must be at least 1")
        self.min_valid_minutes = min_valid_minutes

    def calculate(
        self,
        symbol: str,
        quotes: Iterable[VenueQuote],
        *,
        end: int | datetime,
        window_ms: int | None = None,
    ) -> SettlementPriceResult:
        """Settlement price for the window [end - window, end).

        Quotes of other symbols or outside the window are ignored (not audited:
        they are not part of this settlement's data).
        """
        end_ms = to_ms(end, name="end")
        window = self.window_ms if window_ms is None else window_ms
        if window <= 0 or window % MINUTE_MS:
            raise ValueError("window_ms must be a positive whole number of minutes")
        start_ms = end_ms - window
        n_minutes = window // MINUTE_MS
        buckets: list[list[VenueQuote]] = [[] for _ in range(n_minutes)]
        for q in quotes:
            if q.symbol == symbol and start_ms <= q.timestamp < end_ms:
                buckets[(q.timestamp - start_ms) // MINUTE_MS].append(q)

        minutes = tuple(
            self._minute(start_ms + i * MINUTE_MS, bucket) for i, bucket in enumerate(buckets)
        )
        values = [m.value for m in minutes if m.value is not None]
        if len(values) < self.min_valid_minutes:
            reason = (
                "no valid sample in the window"
                if not values
                else f"{len(values)} valid minute(s), {self.min_valid_minutes} required"
            )
            return SettlementPriceResult(
                symbol=symbol,
                status=SettlementStatus.NO_PRICE,
                price=None,
                unrounded=None,
                window_start=start_ms,
                window_end=end_ms,
                minutes=minutes,
                reason=reason,
            )
        ctx = CALC_CONTEXT
        mean = ctx.divide(dsum(values), len(values))
        price = quantize_to_tick(mean, self.tick if self.tick is not None else DEFAULT_PRICE_QUANTUM)
        return SettlementPriceResult(
            symbol=symbol,
            status=SettlementStatus.OK,
            price=price,
            unrounded=mean,
            window_start=start_ms,
            window_end=end_ms,
            minutes=minutes,
        )

    def _minute(self, start: int, quotes: list[VenueQuote]) -> MinuteSample:
        dropped: list[SampleDrop] = []
        candidates: list[VenueQuote] = []
        for q in quotes:
            if q.venue not in self.weights:
                dropped.append(SampleDrop(q, "unknown_venue", f"source {q.venue} has no weight"))
            elif q.price <= 0:
                dropped.append(SampleDrop(q, "non_positive_price", f"price {q.price}"))
            elif q.volume < 0:
                dropped.append(SampleDrop(q, "negative_volume", f"volume {q.volume}"))
            else:
                candidates.append(q)
        if not candidates:
            return MinuteSample(
                start=start,
                median=None,
                value=None,
                kept=(),
                dropped=tuple(dropped),
                reason="no sample" if not quotes else "no valid sample",
            )
        ctx = CALC_CONTEXT
        mid = median([q.price for q in candidates])
        limit = ctx.multiply(mid, self.outlier_threshold)
        kept: list[tuple[VenueQuote, Decimal]] = []
        for q in candidates:
            if abs(ctx.subtract(q.price, mid)) > limit:
                deviation = ctx.divide(abs(ctx.subtract(q.price, mid)), mid)
                dropped.append(SampleDrop(q, "outlier", f"{deviation:.4%} from minute median {mid}"))
            else:
                kept.append((q, ctx.multiply(self.weights[q.venue], q.volume)))
        total = dsum(w for _, w in kept)
        if total == 0:
            return MinuteSample(
                start=start,
                median=mid,
                value=None,
                kept=tuple(kept),
                dropped=tuple(dropped),
                reason="kept samples have zero volume",
            )
        weighted = dsum(ctx.multiply(q.price, w) for q, w in kept)
        value = ctx.divide(weighted, total)
        return MinuteSample(
            start=start,
            median=mid,
            value=value,
            kept=tuple(kept),
            dropped=tuple(dropped),
        )
