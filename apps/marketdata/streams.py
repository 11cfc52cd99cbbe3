"""Market stream names, groups and payloads (Binance USDⓈ-M conventions).

Pure functions shared by the websocket consumer and the stream relay. A stream
name is parsed into a `Stream` (`parse_stream`), which says which group carries
it (`Stream.group`; each group is one Redis channel, `apps.marketdata.fanout`)
and how a group message becomes the client payload (`Stream.render`). Supported names: `<symbol>@markPrice[@1s]`,
`!markPrice@arr[@1s]`, `<symbol>@aggTrade`, `<symbol>@depth[@100ms|@250ms|@500ms|@0ms]`,
`<symbol>@depth<5|10|20>[@...ms]`, `<symbol>@bookTicker` and
`<symbol>@kline_<interval>` (1m ... 1d); symbols are lowercase in names. Group
messages are `{"kind": ..., "symbol": ..., "data": ...}` (`relay.stream_update`) with
kinds mark, markarr, aggTrade, depth, book and kline (which also carries
"interval"). Payload field names and types follow Binance exactly (prices and
quantities as strings, times as epoch ms). A listen key is not a stream name: the
consumer tells it apart first (`apps.accounts.user_stream.is_listen_key_name`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

MARK_GROUP = "md.mark.{symbol}"
MARK_ARR_GROUP = "md.markarr"
TRADE_GROUP = "md.trade.{symbol}"
DEPTH_GROUP = "md.depth.{symbol}"
BOOK_GROUP = "md.book.{symbol}"
KLINE_GROUP = "md.kline.{symbol}.{interval}"
BOOK_LEVELS = 20  # levels the relay sends in a book snapshot (the deepest partial stream)

# Kline interval -> width in ms. Every one of these opens on a multiple of its width
# since the epoch (as the REST klines do); 3d/1w/1M are REST-only.
KLINE_INTERVALS_MS: dict[str, int] = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": 86_400_000,
}

_SYMBOL = r"(?P<symbol>[a-z0-9]+(?:_[0-9]{6})?)"
_SPEED = r"(?:@(?P<speed>0|100|250|500)ms)?"
_PATTERNS = [
    ("mark", re.compile(rf"^{_SYMBOL}@markPrice(?P<fast>@1s)?$")),
    ("markarr", re.compile(r"^!markPrice@arr(?P<fast>@1s)?$")),
    ("aggTrade", re.compile(rf"^{_SYMBOL}@aggTrade$")),
    ("depth", re.compile(rf"^{_SYMBOL}@depth(?P<levels>5|10|20)?{_SPEED}$")),
    ("bookTicker", re.compile(rf"^{_SYMBOL}@bookTicker$")),
    ("kline", re.compile(rf"^{_SYMBOL}@kline_(?P<interval>{'|'.join(KLINE_INTERVALS_MS)})$")),
]


class InvalidStream(ValueError):
    """A stream name that is not one of ours (or names an unknown symbol)."""


@dataclass(frozen=True, slots=True)
class Stream:
    name: str  # canonical: lowercase symbol
    kind: str  # mark, markarr, aggTrade, depth, bookTicker, kline
    symbol: str | None  # uppercase contract symbol (None for !markPrice@arr)
    levels: int | None = None  # partial depth
    interval: str | None = None  # kline
    min_interval: float = 0.0  # seconds between pushes (markPrice: 3 s, @1s: 1 s)

    @property
    def group(self) -> str:
        if self.kind == "mark":
            return MARK_GROUP.format(symbol=self.symbol)
        if self.kind == "markarr":
            return MARK_ARR_GROUP
        if self.kind == "aggTrade":
            return TRADE_GROUP.format(symbol=self.symbol)
        if self.kind == "depth" and self.levels is None:
            return DEPTH_GROUP.format(symbol=self.symbol)
        if self.kind == "kline":
            return KLINE_GROUP.format(symbol=self.symbol, interval=self.interval)
        return BOOK_GROUP.format(symbol=self.symbol)  # partial depth, bookTicker

    def render(self, message: dict) -> list:
        """The client payloads (zero or more) this stream makes of a group message."""
        data = message["data"]
        if self.kind in ("mark", "markarr"):
            return [data]
        if self.kind in ("aggTrade", "kline"):
            return list(data)
        if self.kind == "depth" and self.levels is None:
            return [data]
        if self.kind == "depth":
            n = self.levels
            return [{"e": "depthUpdate", "E": data["E"], "T": data["T"], "s": data["s"], "U": data["U"],
                     "u": data["u"], "pu": data["pu"], "b": data["b"][:n], "a": data["a"][:n]}]
        # bookTicker
        if not data["b"] and not data["a"]:
            return []
        bid = data["b"][0] if data["b"] else ["0", "0"]
        ask = data["a"][0] if data["a"] else ["0", "0"]
        return [{"e": "bookTicker", "u": data["u"], "s": data["s"], "b": bid[0], "B": bid[1], "a": ask[0],
                 "A": ask[1], "T": data["T"], "E": data["E"]}]


def parse_stream(name: object, *, symbols: set[str] | frozenset[str]) -> Stream:
    """Parse a client's stream name; `symbols` are the tradable contract symbols (uppercase)."""
    if not isinstance(name, str) or not name or len(name) > 64:
        raise InvalidStream(f"invalid stream name {name!r}")
    at = name.find("@")
    # Symbols are case-insensitive (clients send either); the rest is exact.
    candidate = name if at <= 0 or name.startswith("!") else name[:at].lower() + name[at:]
    for kind, pattern in _PATTERNS:
        match = pattern.match(candidate)
        if match is None:
            continue
        groups = match.groupdict()
        symbol = groups.get("symbol")
        if symbol is not None:
            symbol = symbol.upper()
            if symbol not in symbols:
                raise InvalidStream(f"invalid stream name {name!r}: unknown symbol {symbol}")
        if kind in ("mark", "markarr"):
            interval = 1.0 if groups.get("fast") else 3.0
            return Stream(candidate, kind, symbol, min_interval=interval)
        if kind == "kline":
            return Stream(candidate, kind, symbol, interval=groups["interval"])
        levels = groups.get("levels")
        return Stream(candidate, kind, symbol, levels=int(levels) if levels else None)
    raise InvalidStream(f"invalid stream name {name!r}")


# -- payload builders (relay side) -------------------------------------------------------


def fmt8(value: Decimal) -> str:
    """Binance prints mark/index/funding figures with 8 decimals."""
    return f"{value.quantize(Decimal('0.00000001')):f}"


def mark_price_update(
    *, symbol: str, mark: Decimal, index: Decimal, event_ms: int, estimated_settle: Decimal | None = None,
    funding_rate: Decimal | None = None, next_funding_ms: int = 0,
) -> dict:
    """markPriceUpdate: e, E, s, p, i, P, r, T (r: the predicted funding rate of the interval
    ending at T; "0.00000000" when the funding engine has none, e.g. delivery contracts)."""
    return {
        "e": "markPriceUpdate",
        "E": event_ms,
        "s": symbol,
        "p": fmt8(mark),
        "i": fmt8(index),
        "P": fmt8(estimated_settle if estimated_settle is not None else index),
        "r": fmt8(funding_rate if funding_rate is not None else Decimal(0)),
        "T": next_funding_ms,
    }


def agg_trades(*, symbol: str, trades: list[dict], event_ms: int) -> list[dict]:
    """aggTrade payloads: consecutive fills of one taker order at one price are one aggregate.

    `a` is the id of the aggregate's first trade (unique and increasing), `m` is
    true when the buyer was the maker (the taker sold).
    """
    out: list[dict] = []
    current: dict | None = None
    for trade in trades:
        try:
            price = str(trade["price"])
            qty = Decimal(str(trade["qty"]))
            trade_id = int(trade["id"])
        except (KeyError, TypeError, ValueError, ArithmeticError):
            continue
        taker = trade.get("taker_order_id")
        side = str(trade.get("taker_side", "")).upper()
        when = int(trade.get("time") or event_ms)
        if current is not None and current["_taker"] == taker and current["p"] == price and taker is not None:
            current["_q"] += qty
            current["l"] = trade_id
            continue
        current = {"e": "aggTrade", "E": event_ms, "s": symbol, "a": trade_id, "p": price, "q": None,
                   "f": trade_id, "l": trade_id, "T": when, "m": side == "SELL", "_taker": taker, "_q": qty}
        out.append(current)
    for agg in out:
        agg["q"] = _plain(agg.pop("_q"))
        agg.pop("_taker")
    return out


def _plain(value: Decimal) -> str:
    text = f"{value.normalize():f}"
    return text


class LocalBook:
    """Aggregated price levels of one symbol, kept from the matcher's depth changes."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.last_u: int = 0

    def load(self, bids: list[tuple[Decimal, Decimal]], asks: list[tuple[Decimal, Decimal]]) -> None:
        self.bids = {p: q for p, q in bids if q > 0}
        self.asks = {p: q for p, q in asks if q > 0}

    def apply(self, side: str, levels: list) -> list[list[str]]:
        """Set levels to their new totals ("0" removes); returns the valid changes as strings."""
        book = self.bids if side == "bids" else self.asks
        changes: list[list[str]] = []
        for level in levels or ():
            try:
                price, qty = Decimal(str(level[0])), Decimal(str(level[1]))
            except (IndexError, TypeError, ValueError, ArithmeticError):
                continue
            if not price.is_finite() or not qty.is_finite() or price <= 0 or qty < 0:
                continue
            if qty == 0:
                book.pop(price, None)
            else:
                book[price] = qty
            changes.append([str(level[0]), str(level[1])])
        return changes

    def top(self, n: int = BOOK_LEVELS) -> tuple[list[list[str]], list[list[str]]]:
        bids = sorted(self.bids.items(), key=lambda kv: -kv[0])[:n]
        asks = sorted(self.asks.items(), key=lambda kv: kv[0])[:n]
        return [[_plain(p), _plain(q)] for p, q in bids], [[_plain(p), _plain(q)] for p, q in asks]


def kline_open_ms(interval: str, at_ms: int) -> int:
    """Open time of the `interval` kline holding `at_ms`."""
    width = KLINE_INTERVALS_MS[interval]
    return at_ms // width * width


class Candle:
    """The open kline of one symbol and interval, kept by the relay from the trades it sees.

    A trade counts once: trades with an id at or below the last one counted are
    skipped, so a candle seeded from the trades table and then fed the event that
    carried some of the same trades does not count them twice.
    """

    __slots__ = ("interval", "open_ms", "close_ms", "first_id", "last_id", "open", "high", "low", "close",
                 "volume", "quote", "count", "buy_volume", "buy_quote", "closed")

    def __init__(self, interval: str, open_ms: int) -> None:
        self.interval = interval
        self.open_ms = open_ms
        self.close_ms = open_ms + KLINE_INTERVALS_MS[interval] - 1
        self.first_id = -1
        self.last_id = -1
        self.open = self.high = self.low = self.close = None
        self.volume = self.quote = self.buy_volume = self.buy_quote = Decimal(0)
        self.count = 0
        self.closed = False  # the final (x=true) payload was sent

    def seed(self, *, first_id: int, last_id: int, open: Decimal, high: Decimal, low: Decimal, close: Decimal,
             volume: Decimal, quote: Decimal, count: int, buy_volume: Decimal, buy_quote: Decimal) -> None:
        self.first_id, self.last_id = first_id, last_id
        self.open, self.high, self.low, self.close = open, high, low, close
        self.volume, self.quote, self.count = volume, quote, count
        self.buy_volume, self.buy_quote = buy_volume, buy_quote

    def add(self, *, trade_id: int, price: Decimal, qty: Decimal, quote: Decimal, taker_buy: bool) -> bool:
        """Count one trade; False when it was counted before (or the candle is final)."""
        if trade_id <= self.last_id or self.closed:
            return False
        if self.open is None:
            self.open = self.high = self.low = price
            self.first_id = trade_id
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.close = price
        self.last_id = trade_id
        self.volume += qty
        self.quote += quote
        self.count += 1
        if taker_buy:
            self.buy_volume += qty
            self.buy_quote += quote
        return True

    @property
    def empty(self) -> bool:
        return self.open is None

    def payload(self, *, symbol: str, event_ms: int) -> dict:
        """The Binance kline event (`x` is true once the candle is final)."""
        return {
            "e": "kline", "E": event_ms, "s": symbol,
            "k": {
                "t": self.open_ms, "T": self.close_ms, "s": symbol, "i": self.interval,
                "f": self.first_id, "L": self.last_id,
                "o": _plain(self.open), "c": _plain(self.close), "h": _plain(self.high), "l": _plain(self.low),
                "v": _plain(self.volume), "n": self.count, "x": self.closed, "q": _plain(self.quote),
                "V": _plain(self.buy_volume), "Q": _plain(self.buy_quote), "B": "0",
            },
        }
