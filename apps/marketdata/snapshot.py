"""`PriceSnapshot`, the latest prices of one contract, and its Redis layout.

Shared by `services.price_publish` (which writes it) and `selectors.price_latest`
(which reads it). The Redis copy is a cache of the latest `PriceSample` row, one
key per symbol (`md:price:<SYMBOL>`, JSON with decimals as strings and the time in
epoch ms); the database row is the record.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from exchange.redis import channel

from .engine.quotes import ms_to_datetime, to_ms

PRICE_KEY = "md:price:{symbol}"
PRICE_CHANNEL = channel("md:prices")  # pub/sub: snapshots for the stream relay (JSON list)
PRICE_KEY_TTL_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class PriceSnapshot:
    symbol: str
    index_price: Decimal
    mark_price: Decimal
    at: datetime

    @property
    def at_ms(self) -> int:
        return to_ms(self.at)

    def to_json(self, *, contract_id: int | None = None) -> str:
        body = {"s": self.symbol, "i": str(self.index_price), "p": str(self.mark_price), "t": self.at_ms}
        if contract_id is not None:
            body["c"] = contract_id
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> tuple[PriceSnapshot, int | None]:
        body = json.loads(raw)
        snapshot = cls(
            symbol=body["s"],
            index_price=Decimal(body["i"]),
            mark_price=Decimal(body["p"]),
            at=ms_to_datetime(int(body["t"])),
        )
        return snapshot, body.get("c")
