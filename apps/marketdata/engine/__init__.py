"""Pure price computation for the exchange: index, mark, anomalies, settlement.

This package is the deterministic core behind the pricefeed process and the
delivery job. It holds no Django, database or Redis code and never reads the
clock: quotes and instants come in as arguments (`VenueQuote`, epoch ms or aware
datetimes), prices go out as `Decimal` with result objects that carry their own
audit detail, so the Django side only stores, publishes and alerts. Modules:
`quotes` (value type, Decimal/time helpers, the rounding rule), `index`, `mark`,
`anomaly`, `settlement_price`, `sources` (simulated venues, CSV replay, live
adapter point) and `pipeline` (index -> anomaly -> mark per symbol and tick).
"""
from .anomaly import (
    AnomalyCheck,
    AnomalyConfig,
    AnomalyDetector,
    AnomalyRecord,
    AnomalyType,
    DetectorState,
    PauseLift,
    Severity,
)
from .index import DropReason, DroppedQuote, IndexCalculator, IndexResult, IndexStatus, UsedQuote
from .mark import MarkCalculator, MarkResult, MarkStatus
from .pipeline import PriceUpdate, PricingPipeline
from .quotes import VenueQuote, quantize_to_tick, to_decimal, to_ms
from .settlement_price import (
    MinuteSample,
    SampleDrop,
    SettlementPriceCalculator,
    SettlementPriceResult,
    SettlementStatus,
)
from .sources import (
    Crash,
    CsvFormatError,
    CsvReplay,
    LiveVenues,
    Outage,
    Outlier,
    PriceSource,
    QuoteBatch,
    SimulatedVenues,
    SourceUnavailable,
    StaleFeed,
    SymbolSpec,
    VenueSpec,
    make_source,
    write_csv,
)

__all__ = [
    "AnomalyCheck",
    "AnomalyConfig",
    "AnomalyDetector",
    "AnomalyRecord",
    "AnomalyType",
    "Crash",
    "CsvFormatError",
    "CsvReplay",
    "DetectorState",
    "DropReason",
    "DroppedQuote",
    "IndexCalculator",
    "IndexResult",
    "IndexStatus",
    "LiveVenues",
    "MarkCalculator",
    "MarkResult",
    "MarkStatus",
    "MinuteSample",
    "Outage",
    "Outlier",
    "PauseLift",
    "PriceSource",
    "PriceUpdate",
    "PricingPipeline",
    "QuoteBatch",
    "SampleDrop",
    "SettlementPriceCalculator",
    "SettlementPriceResult",
    "SettlementStatus",
    "Severity",
    "SimulatedVenues",
    "SourceUnavailable",
    "StaleFeed",
    "SymbolSpec",
    "UsedQuote",
    "VenueQuote",
    "VenueSpec",
    "make_source",
    "quantize_to_tick",
    "to_decimal",
    "to_ms",
    "write_csv",
]
