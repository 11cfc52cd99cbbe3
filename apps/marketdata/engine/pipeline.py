"""One pricing step per symbol: index, then anomaly rules, then the mark.

`PricingPipeline.update` is what a price process calls for each symbol on each
tick with the quotes it holds. It computes the index (reusing it within the 5 s
cache), evaluates the candidate mark with the smoothing factor the detector
currently asks for, runs the anomaly rules on that candidate, and publishes the
mark unless the detector has paused updates, in which case the last mark is
repeated. The spread rule uses the median relative bid/ask spread of the venues
in the index (one wide venue is not a market-wide widening), the volume rule the
total volume of those venues. When the index comes from the cache no new market
information arrived, so the previous update is returned (with `cached=True`)
after recording the basis observation; the anomaly history therefore advances at
the index cadence, not at the caller's polling rate. The returned `PriceUpdate`
bundles the three results and the alert messages a caller should raise.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from .anomaly import AnomalyCheck, AnomalyDetector, DetectorState
from .index import IndexCalculator, IndexResult
from .mark import MarkCalculator, MarkResult, MarkStatus
from .quotes import VenueQuote, median, to_ms

__all__ = ["PriceUpdate", "PricingPipeline"]


@dataclass(frozen=True, slots=True)
class PriceUpdate:
    symbol: str
    at: int
    index: IndexResult
    mark: MarkResult
    check: AnomalyCheck | None  # None when no candidate mark could be checked
    state: DetectorState
    cached: bool = False

    @property
    def alerts(self) -> tuple[str, ...]:
        """Messages the caller should alert on (empty when all is well)."""
        out: list[str] = []
        if self.index.alert:
            out.append(f"{self.symbol} index {self.index.status.value}: {self.index.reason}")
        if self.mark.status is MarkStatus.FALLBACK:
            out.append(f"{self.symbol} mark fallback to last mark: {self.mark.reason}")
        if self.check is not None:
            out.extend(a.message for a in self.check.anomalies)
        return tuple(out)

    @property
    def emergency(self) -> bool:
        return self.check is not None and self.check.emergency


class PricingPipeline:
    """Index -> anomaly -> mark for many symbols, sharing three calculators."""

    def __init__(self, index: IndexCalculator, mark: MarkCalculator, detector: AnomalyDetector | None = None) -> None:
        self.index = index
        self.mark = mark
        self.detector = detector or AnomalyDetector()
        self._last: dict[str, PriceUpdate] = {}

    def update(
        self,
        symbol: str,
        quotes: Iterable[VenueQuote],
        *,
        now: int | datetime,
        contract_price: Decimal | None = None,
        force: bool = False,
    ) -> PriceUpdate:
        now_ms = to_ms(now, name="now")
        index = self.index.compute(symbol, quotes, now=now_ms, force=force)
        previous = self._last.get(symbol)
        if index.cached and previous is not None and previous.index.computed_at == index.computed_at:
            if contract_price is not None and index.price is not None:
                self.mark.record_basis(symbol, contract_price=contract_price, index_price=index.price, at=now_ms)
            # Same market information as the previous update: its anomalies were
            # already reported, so they are not repeated.
            return replace(previous, cached=True, check=None)

        detector = self.detector
        smoothing = detector.smoothing_factor(symbol, now=now_ms)
        candidate = self.mark.evaluate(
            symbol, index=index, now=now_ms, contract_price=contract_price, smoothing=smoothing
        )
        check = None
        if candidate.status is MarkStatus.FRESH and candidate.candidate is not None:
            spreads = [s for s in (u.quote.spread for u in index.used) if s is not None]
            check = detector.observe(
                symbol,
                price=candidate.candidate,
                volume=index.total_volume,
                spread=median(spreads) if spreads else None,
                at=now_ms,
            )
            state = check.state
        else:
            state = detector.state(symbol, now=now_ms)
        if candidate.status is MarkStatus.FRESH:
            if state.paused:
                mark = self.mark.hold(candidate, reason=state.describe())
            else:
                mark = self.mark.accept(candidate)
        else:
            mark = candidate
        update = PriceUpdate(symbol=symbol, at=now_ms, index=index, mark=mark, check=check, state=state)
        self._last[symbol] = update
        return update
