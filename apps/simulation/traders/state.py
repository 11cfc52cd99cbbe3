"""What a participant knows: the market (per symbol) and its own account.

Both are filled from two directions, as a real API client's state is: pushed events
from the websockets (`markPriceUpdate`, `bookTicker`, `ORDER_TRADE_UPDATE`,
`ACCOUNT_UPDATE`) as they arrive, and REST snapshots (`premiumIndex`,
`ticker/bookTicker`, `openOrders`, `v2/account`) when a stream is down or
periodically to correct anything an event missed. Nothing here does I/O.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

OPEN = ("NEW", "PARTIALLY_FILLED", "PENDING_NEW")
MAX_JUMP = Decimal("0.10")  # a streamed mark this far from the last one is a bad tick
D = Decimal


def dec(value, default: Decimal | None = None) -> Decimal | None:
    try:
        out = Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError):
        return default
    return out if out.is_finite() else default


@dataclass
class SymbolMarket:
    mark: Decimal | None = None
    index: Decimal | None = None
    best_bid: Decimal | None = None
    best_ask: Decimal | None = None
    mark_at: float = 0.0  # monotonic time of the last mark


class MarketState:
    """Latest mark, index and top of book per symbol, with when each was seen."""

    def __init__(self, symbols, *, clock=time.monotonic) -> None:
        self.symbols = {s: SymbolMarket() for s in symbols}
        self.version = 0  # bumped when the set of symbols changes (the stream reconnects)
        self._clock = clock
        self.connected = False  # the market websocket is open
        self.ws_messages = 0
        self.rest_refreshes = 0
        self.dropped = 0  # streamed marks dropped as bad ticks

    def set_symbols(self, symbols) -> bool:
        """Follow the listed symbols (a contract listed or delivered); True when they changed."""
        wanted = set(symbols)
        if wanted == set(self.symbols):
            return False
        self.symbols = {s: self.symbols.get(s) or SymbolMarket() for s in sorted(wanted)}
        self.version += 1
        return True

    def on_mark(self, symbol: str, mark, index, *, trusted: bool = False) -> None:
        """A mark from the stream, or (`trusted`) read from the server over REST.

        A streamed mark more than MAX_JUMP away from the last one is dropped as a bad
        tick: a real move that large is picked up from REST once the stream's marks have
        been dropped for STALE seconds (streams.market_rest_fallback).
        """
        entry = self.symbols.get(symbol)
        mark = dec(mark)
        if entry is None or mark is None or mark <= 0:
            return
        if not trusted and entry.mark is not None and abs(mark - entry.mark) > entry.mark * MAX_JUMP:
            self.dropped += 1
            return
        entry.mark = mark
        index = dec(index)
        entry.index = index if index is not None and index > 0 else None
        entry.mark_at = self._clock()

    def on_book(self, symbol: str, bid, ask) -> None:
        entry = self.symbols.get(symbol)
        if entry is None:
            return
        entry.best_bid = self._near_mark(entry, dec(bid))
        entry.best_ask = self._near_mark(entry, dec(ask))

    @staticmethod
    def _near_mark(entry: SymbolMarket, price: Decimal | None) -> Decimal | None:
        """A top-of-book price, or None for an empty side ("0") or one far from the mark
        (a quote that far away says nothing about where to place a post-only order)."""
        if price is None or price <= 0:
            return None
        if entry.mark is not None and abs(price - entry.mark) > entry.mark * MAX_JUMP:
            return None
        return price

    def on_stream_message(self, data: dict) -> None:
        """One market stream payload (`markPriceUpdate` or `bookTicker`)."""
        self.ws_messages += 1
        event = data.get("e")
        symbol = str(data.get("s", "")).upper()
        if event == "markPriceUpdate":
            self.on_mark(symbol, data.get("p"), data.get("i"))
        elif event == "bookTicker":
            self.on_book(symbol, data.get("b"), data.get("a"))

    def mark_age(self, symbol: str) -> float:
        entry = self.symbols.get(symbol)
        if entry is None or entry.mark is None:
            return float("inf")
        return self._clock() - entry.mark_at

    def view(self, symbol: str, *, max_age: float) -> SymbolMarket | None:
        """The symbol's market when its mark is known and at most `max_age` seconds old."""
        if self.mark_age(symbol) > max_age:
            return None
        return self.symbols[symbol]


@dataclass
class OwnOrder:
    order_id: int
    symbol: str
    client_id: str
    side: str
    price: Decimal
    qty: Decimal
    executed: Decimal = D(0)


def tag_of(client_id: str) -> str:
    """The ladder slot a client order id names: `<prefix>-<run>-<tag>-<n>` -> tag."""
    parts = client_id.split("-")
    return parts[2] if len(parts) == 4 else ""


@dataclass
class Portfolio:
    """A participant's own orders, positions and wallet, as far as the client knows."""

    wallet: Decimal = D(0)
    available: Decimal = D(0)
    positions: dict[str, Decimal] = field(default_factory=dict)
    orders: dict[int, OwnOrder] = field(default_factory=dict)
    loaded: bool = False  # the account was read over REST at least once
    fills: int = 0
    liquidations: int = 0
    user_events: int = 0

    def position(self, symbol: str) -> Decimal:
        return self.positions.get(symbol, D(0))

    def orders_of(self, symbol: str) -> list[OwnOrder]:
        return [o for o in self.orders.values() if o.symbol == symbol]

    # -- REST answers -----------------------------------------------------------------

    def on_order_answer(self, payload: dict) -> None:
        """An order as POST/PUT/DELETE/GET order report it."""
        order_id = int(payload["orderId"])
        if payload.get("status") not in OPEN:
            self.orders.pop(order_id, None)
            return
        self.orders[order_id] = OwnOrder(
            order_id=order_id, symbol=payload["symbol"], client_id=payload.get("clientOrderId", ""),
            side=payload["side"], price=dec(payload.get("price"), D(0)), qty=dec(payload.get("origQty"), D(0)),
            executed=dec(payload.get("executedQty"), D(0)),
        )

    def load_open_orders(self, symbol: str, payloads: list[dict]) -> None:
        """`GET openOrders?symbol=`: the whole truth for that symbol."""
        for order in self.orders_of(symbol):
            del self.orders[order.order_id]
        for payload in payloads:
            self.on_order_answer(payload)

    def load_account(self, account: dict, *, asset: str = "USDT") -> None:
        """`GET /fapi/v2/account`: wallet, available balance and every position."""
        for entry in account.get("assets", ()):
            if entry.get("asset") == asset:
                self.wallet = dec(entry.get("walletBalance"), self.wallet)
                self.available = dec(entry.get("availableBalance"), self.available)
        positions = {}
        for entry in account.get("positions", ()):
            size = dec(entry.get("positionAmt"), D(0))
            if size:
                positions[entry["symbol"]] = size
        self.positions = positions
        self.loaded = True

    # -- user data stream -----------------------------------------------------------

    def on_user_event(self, event: dict, *, known_symbols) -> None:
        self.user_events += 1
        kind = event.get("e")
        if kind == "ORDER_TRADE_UPDATE":
            self._on_order_event(event.get("o") or {}, known_symbols)
        elif kind == "ACCOUNT_UPDATE":
            self._on_account_event(event.get("a") or {})

    def _on_order_event(self, o: dict, known_symbols) -> None:
        symbol = o.get("s")
        if symbol not in known_symbols:
            return
        try:
            order_id = int(o["i"])
        except (KeyError, TypeError, ValueError):
            return
        if o.get("x") == "TRADE":
            self.fills += 1
        if o.get("o") == "LIQUIDATION" and o.get("X") not in OPEN:
            self.liquidations += 1  # once per liquidation order, at its final status
        known = self.orders.get(order_id)
        if o.get("X") not in OPEN:
            self.orders.pop(order_id, None)
        elif known is not None:
            known.executed = dec(o.get("z"), known.executed)

    def _on_account_event(self, a: dict) -> None:
        for balance in a.get("B", ()):
            if balance.get("a") == "USDT":
                self.wallet = dec(balance.get("wb"), self.wallet)
        for position in a.get("P", ()):
            size = dec(position.get("pa"), None)
            if size is None or "s" not in position:
                continue
            if size:
                self.positions[position["s"]] = size
            else:
                self.positions.pop(position["s"], None)
