"""Helpers shared by the pricing-engine tests.

A plain module rather than a conftest, and no fixtures, so the tests also run
with no Django at all: `pytest -p no:django --noconftest tests/marketdata`.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from apps.marketdata.engine import Outage, Outlier, SimulatedVenues, StaleFeed, VenueQuote

SAMPLE = Path(__file__).resolve().parents[2] / "apps" / "marketdata" / "samples" / "ticks_sample.csv"
SAMPLE_T0 = 1_717_200_000_000  # 2024-06-01T00:00:00Z


def q(
    venue: str, price, volume="1000", *, ts: int = 1_000_000, symbol: str = "BTCUSDT", bid=None, ask=None
) -> VenueQuote:
    """Terse quote constructor for hand examples (strings become Decimals)."""
    return VenueQuote(venue, symbol, Decimal(str(price)), Decimal(str(volume)), bid, ask, ts)


def sample_source() -> SimulatedVenues:
    """The recipe of `ticks_sample.csv`: default venues, seed 2024, three events."""
    return SimulatedVenues.default(
        seed=2024,
        t0=SAMPLE_T0,
        scenarios=[
            Outlier("okx", "BTCUSDT", SAMPLE_T0 + 30_000, factor=1.15),
            StaleFeed("bybit", SAMPLE_T0 + 50_000, 20_000, symbol="ETHUSDT"),
            Outage("okx", SAMPLE_T0 + 70_000, 10_000),
        ],
    )


def record_sample() -> list[VenueQuote]:
    """Every distinct quote the sample source delivers during its first 90 s."""
    source = sample_source()
    seen: dict[tuple[str, str, int], VenueQuote] = {}
    for batch in source.batches(start=SAMPLE_T0, stop=SAMPLE_T0 + 90_000, step_ms=100):
        for quote in batch.quotes:
            seen.setdefault((quote.venue, quote.symbol, quote.timestamp), quote)
    return sorted(seen.values(), key=lambda x: (x.timestamp, x.venue, x.symbol))
