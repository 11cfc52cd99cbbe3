"""The demo participants: each one a user with its own API key, trading over REST and websockets.

A `Participant` runs one loop: read its account over REST at start and every
~20 s (and after its user data stream reconnects or a request's outcome was lost),
then repeatedly `step()` and wait. Every API refusal is counted per error code and
logged (rate-limited per code), never raised out of the loop: a trader that is
short of margin (-2019), being liquidated (-2023) or refused by the risk gate
(-2030) just tries again later. Its decisions come from `strategies.py`.

- `MarketMaker` keeps a post-only (GTX) ladder on every symbol: it places missing
  slots with `POST batchOrders`, moves resting quotes with `PUT order` (amend) when
  they drift, and cancels slots the inventory limit no longer allows with
  `DELETE batchOrders`.
- `Taker` sends a market or IOC order on a random symbol at exponential intervals.
- `TrendFollower` trades one perpetual on the mark's momentum. For each new trend it
  sets the margin type (`POST marginType`, while flat: ISOLATED for a reckless bet,
  CROSSED otherwise) and the leverage (`POST leverage`: 75-100x for a reckless bet,
  so that liquidations happen now and then), then works toward its target in market
  slices, each answered with its RESULT and followed by a fresh read of the account.
  After a liquidation it sits the trend out; when its wallet is nearly gone and it is
  flat (or cannot even pay a closing order's fee), the demo faucet tops it up.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal

from .client import SIGNED, ApiError, RestClient, ServerUnavailable, Stopping, pause
from .rules import SymbolRules, fmt
from .state import MarketState, Portfolio, dec, tag_of
from .strategies import (
    MakerParams,
    Momentum,
    OrderIntent,
    Quote,
    TakerParams,
    TrendParams,
    TrendPlan,
    maker_quotes,
    needs_requote,
    taker_order,
    taker_wait,
    trend_direction,
    trend_order,
    trend_plan,
    trend_target,
)
from .streams import user_stream

logger = logging.getLogger(__name__)

D = Decimal
MAX_MARK_AGE = 10.0  # seconds; an older mark is not traded on
RECONCILE_SECONDS = (15.0, 25.0)
ERROR_LOG_EVERY = 60.0  # seconds between log lines for one error code of one participant
BATCH = 5  # the API's batchOrders limit
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
# Refusals that only mean the order changed state before the request arrived (filled,
# cancelled, a post-only quote that would have crossed): normal for a quoting bot.
RACES = frozenset({-2010, -2011, -2013, -5022})
IN_LIQUIDATION = -2023
MARGIN_INSUFFICIENT = -2019
RISK_TOO_HIGH = -2030  # the pre-trade risk gate
NO_NEED_TO_CHANGE_MARGIN_TYPE = -4046

Faucet = Callable[[str], Awaitable[Decimal | None]]


def base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _ID_ALPHABET[r] + out
        if n == 0:
            return out


@dataclass
class Stats:
    """What a participant did, for the log and the run summary."""

    orders_acked: int = 0
    amends: int = 0
    cancels: int = 0
    refills: int = 0
    errors: Counter = field(default_factory=Counter)
    acked_ids: set[int] | None = None  # kept only when a summary asks for them

    def acked(self, order_id: int) -> None:
        self.orders_acked += 1
        if self.acked_ids is not None:
            self.acked_ids.add(order_id)


class Participant:
    role = "participant"

    def __init__(self, *, name: str, short: str, user_id: int, client: RestClient, market: MarketState,
                 rules: dict[str, SymbolRules], rng: random.Random, stopping: asyncio.Event, base_url: str,
                 record_ids: bool = False, faucet: Faucet | None = None) -> None:
        self.name = name
        self.short = short
        self.user_id = user_id
        self.client = client
        self.market = market
        self.rules = rules  # shared by every participant, kept current by the runner
        self.rng = rng
        self.stopping = stopping
        self.base_url = base_url
        self.faucet = faucet
        self.portfolio = Portfolio()
        self.stats = Stats(acked_ids=set() if record_ids else None)
        # Client order ids are unique per user forever: a token per run keeps a restarted
        # process (same seed, same counters) from reusing one (-4116).
        self._run = "".join(secrets.choice(_ID_ALPHABET) for _ in range(5))
        self._counter = 0
        self._reconcile_at = 0.0
        self._error_logged: dict[int, tuple[float, int]] = {}

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        stream = asyncio.create_task(user_stream(
            base_url=self.base_url, client=self.client, portfolio=self.portfolio, known_symbols=self.rules,
            stopping=self.stopping, on_reconnect=self.request_reconcile))
        try:
            await self.guard(self.start)
            while True:
                if time.monotonic() >= self._reconcile_at:
                    self._reconcile_at = time.monotonic() + self.rng.uniform(*RECONCILE_SECONDS)
                    await self.guard(self.reconcile)
                await self.guard(self.step)
                await pause(self.stopping, self.next_wait())
        except Stopping:
            pass
        finally:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)

    async def guard(self, action) -> None:
        """Run one action; API refusals and lost requests are counted and logged, not raised."""
        liquidations = self.portfolio.liquidations
        try:
            await action()
        except ApiError as exc:
            self.note_error(exc)
        except ServerUnavailable as exc:
            self.stats.errors["unavailable"] += 1
            logger.warning("%s: %s (state re-read from the server next)", self.name, exc)
            self.request_reconcile()
        if self.portfolio.liquidations > liquidations:
            logger.info("%s: liquidated (the liquidation engine closed a position)", self.name)

    def note_error(self, exc: ApiError) -> None:
        self.stats.errors[str(exc.code)] += 1
        now = time.monotonic()
        last, suppressed = self._error_logged.get(exc.code, (float("-inf"), 0))
        if now - last < ERROR_LOG_EVERY:
            self._error_logged[exc.code] = (last, suppressed + 1)
            return
        more = f" (and {suppressed} more since the last report)" if suppressed else ""
        level = logging.INFO if exc.code in RACES or exc.code == IN_LIQUIDATION else logging.WARNING
        logger.log(level, "%s: API refused %s: %s%s", self.name, exc.code, exc.msg, more)
        self._error_logged[exc.code] = (now, 0)

    def request_reconcile(self) -> None:
        self._reconcile_at = 0.0

    @property
    def symbols(self) -> list[str]:
        """The symbols it trades now: every listed one (trend followers: one of them)."""
        return sorted(self.rules)

    def next_wait(self) -> float:
        return 1.0

    async def start(self) -> None:
        """Once, before the first step."""

    async def step(self) -> None:
        raise NotImplementedError

    # -- REST helpers -------------------------------------------------------------------

    async def signed(self, method: str, path: str, params: dict | None = None, *, weight: int = 1):
        return await self.client.call(method, path, params, weight=weight, security=SIGNED)

    async def reconcile(self) -> None:
        """The account and open orders as the server has them (events may have been missed)."""
        self.portfolio.load_account(await self.signed("GET", "/fapi/v2/account", weight=5))
        for symbol in sorted(set(self.symbols) | {o.symbol for o in self.portfolio.orders.values()}):
            orders = await self.signed("GET", "/fapi/v1/openOrders", {"symbol": symbol})
            self.portfolio.load_open_orders(symbol, orders)

    def client_order_id(self, tag: str) -> str:
        self._counter += 1
        return f"dt{self.short}-{self._run}-{tag}-{base36(self._counter)}"

    def _order_params(self, symbol: str, intent: OrderIntent, tag: str) -> dict:
        params = {"symbol": symbol, "side": intent.side, "type": intent.order_type, "quantity": fmt(intent.qty),
                  "newClientOrderId": self.client_order_id(tag)}
        if intent.price is not None:
            params["price"] = fmt(intent.price)
        if intent.time_in_force:
            params["timeInForce"] = intent.time_in_force
        if intent.reduce_only:
            params["reduceOnly"] = "true"
        return params

    async def send_order(self, symbol: str, intent: OrderIntent, tag: str, *, wait_result: bool = False) -> dict:
        """POST one order; `wait_result`: answer after the matcher has processed it (RESULT)."""
        params = self._order_params(symbol, intent, tag)
        if wait_result:
            params["newOrderRespType"] = "RESULT"
        answer = await self.signed("POST", "/fapi/v1/order", params)
        self.stats.acked(int(answer["orderId"]))
        self.portfolio.on_order_answer(answer)
        return answer

    async def place_quotes(self, symbol: str, quotes: list[Quote]) -> None:
        for start in range(0, len(quotes), BATCH):
            chunk = quotes[start:start + BATCH]
            items = [self._order_params(symbol, OrderIntent(q.side, "LIMIT", q.qty, q.price, "GTX"), q.tag)
                     for q in chunk]
            answers = await self.signed("POST", "/fapi/v1/batchOrders",
                                        {"batchOrders": json.dumps(items, separators=(",", ":"))}, weight=5)
            for answer in answers:
                if "orderId" in answer:
                    self.stats.acked(int(answer["orderId"]))
                    self.portfolio.on_order_answer(answer)
                else:
                    self.note_error(ApiError(400, int(answer.get("code", -1000)), str(answer.get("msg", ""))))

    async def cancel_orders(self, symbol: str, order_ids: list[int]) -> None:
        for start in range(0, len(order_ids), BATCH):
            chunk = order_ids[start:start + BATCH]
            answers = await self.signed("DELETE", "/fapi/v1/batchOrders",
                                        {"symbol": symbol, "orderIdList": json.dumps(chunk)}, weight=5)
            for order_id in chunk:
                self.portfolio.orders.pop(order_id, None)  # cancelled, or already gone
            self.stats.cancels += sum(1 for a in answers if "orderId" in a)

    def summary(self) -> dict:
        out = {
            "name": self.name, "role": self.role, "user_id": self.user_id, "symbols": self.symbols,
            "orders_acked": self.stats.orders_acked, "amends": self.stats.amends, "cancels": self.stats.cancels,
            "fills_seen": self.portfolio.fills, "liquidations_seen": self.portfolio.liquidations,
            "user_events": self.portfolio.user_events, "refills": self.stats.refills,
            "errors": dict(self.stats.errors),
            "positions": {s: fmt(q) for s, q in self.portfolio.positions.items()},
            "wallet": fmt(self.portfolio.wallet),
        }
        if self.stats.acked_ids is not None:
            out["acked_order_ids"] = sorted(self.stats.acked_ids)
        return out


class MarketMaker(Participant):
    role = "maker"

    def __init__(self, *, params: MakerParams | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.params = params or MakerParams()

    def next_wait(self) -> float:
        return self.rng.uniform(1.0, 2.0)

    async def start(self) -> None:
        # Quotes a previous run left are stale: start from an empty ladder.
        for symbol in self.symbols:
            await self.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": symbol})

    async def step(self) -> None:
        for symbol in sorted({o.symbol for o in self.portfolio.orders.values()} - set(self.rules)):
            await self.guard(lambda s=symbol: self.withdraw(s))
        for symbol in self.symbols:
            view = self.market.view(symbol, max_age=MAX_MARK_AGE)
            if view is not None:
                await self.guard(lambda s=symbol, v=view: self.requote(s, v))

    async def withdraw(self, symbol: str) -> None:
        """Quotes on a symbol that stopped trading (close-only before delivery) come down."""
        await self.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": symbol})
        for order in self.portfolio.orders_of(symbol):
            del self.portfolio.orders[order.order_id]
        logger.info("%s: %s is no longer trading; its quotes are cancelled", self.name, symbol)

    async def requote(self, symbol: str, view) -> None:
        rules = self.rules.get(symbol)
        if rules is None:  # delisted a moment ago; withdrawn on the next step
            return
        wanted = {q.tag: q for q in maker_quotes(
            rules=rules, mark=view.mark, index=view.index, position=self.portfolio.position(symbol),
            params=self.params, best_bid=view.best_bid, best_ask=view.best_ask)}
        resting: dict[str, object] = {}
        stale: list[int] = []
        for order in self.portfolio.orders_of(symbol):
            tag = tag_of(order.client_id)
            if tag not in wanted or tag in resting:
                stale.append(order.order_id)
            else:
                resting[tag] = order
        if stale:
            await self.cancel_orders(symbol, stale)
        for tag, order in resting.items():
            quote = wanted[tag]
            if not needs_requote(resting_price=order.price, resting_qty=order.qty, wanted=quote, params=self.params):
                continue
            if quote.qty <= order.executed:
                await self.cancel_orders(symbol, [order.order_id])
                resting[tag] = None
                continue
            try:
                answer = await self.signed("PUT", "/fapi/v1/order", {
                    "symbol": symbol, "orderId": order.order_id, "side": quote.side,
                    "quantity": fmt(quote.qty), "price": fmt(quote.price)})
            except ApiError as exc:
                self.note_error(exc)  # filled or cancelled meanwhile: the slot is placed again below
                self.portfolio.orders.pop(order.order_id, None)
                resting[tag] = None
                continue
            self.stats.amends += 1
            self.portfolio.on_order_answer(answer)
        missing = [q for tag, q in wanted.items() if resting.get(tag) is None]
        if missing:
            await self.place_quotes(symbol, missing)


class Taker(Participant):
    role = "taker"

    def __init__(self, *, params: TakerParams | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.params = params or TakerParams()

    def next_wait(self) -> float:
        return taker_wait(self.rng, self.params)

    async def step(self) -> None:
        live = [s for s in self.symbols if self.market.view(s, max_age=MAX_MARK_AGE) is not None]
        if not live:
            return
        symbol = self.rng.choice(live)
        view = self.market.view(symbol, max_age=MAX_MARK_AGE)
        intent = taker_order(rng=self.rng, rules=self.rules[symbol], mark=view.mark,
                             position=self.portfolio.position(symbol), params=self.params)
        if intent is not None:
            await self.send_order(symbol, intent, "T")


class TrendFollower(Participant):
    role = "trend"

    def __init__(self, *, slot: int = 0, params: TrendParams | None = None, initial_wallet: Decimal = D(0),
                 refill_below: Decimal = D("0.3"), **kwargs) -> None:
        super().__init__(**kwargs)
        self.params = params or TrendParams()
        self.slot = slot
        self.symbol = self._pick()
        self.momentum = Momentum(self.params.fast, self.params.slow)
        self.plan = TrendPlan(0, self.params.leverage, self.params.exposure)
        self.leverage: int | None = None
        self.margin_type: str | None = None  # as last set (None: not known yet)
        self.max_notional: Decimal | None = None
        self.initial_wallet = initial_wallet
        self.refill_below = refill_below
        self.full = False  # the margin ran out for the current trend: only reduce until it changes
        self.stuck = False  # not even a reduce-only order could hold its fee (-2019): the faucet may help
        self._refilled_at = float("-inf")
        self._liquidations = 0

    def _pick(self) -> str | None:
        """Its symbol: the perpetuals round robin by slot (funding is part of the show)."""
        listed = sorted(self.rules)
        perpetuals = [s for s in listed if self.rules[s].contract_type == "PERPETUAL"] or listed
        return perpetuals[self.slot % len(perpetuals)] if perpetuals else None

    @property
    def symbols(self) -> list[str]:
        return [self.symbol] if self.symbol else []

    def next_wait(self) -> float:
        return self.params.sample_seconds

    async def start(self) -> None:
        if self.symbol:
            await self.set_leverage(self.params.leverage)

    async def set_margin_type(self, margin_type: str) -> None:
        try:
            await self.signed("POST", "/fapi/v1/marginType", {"symbol": self.symbol, "marginType": margin_type})
        except ApiError as exc:
            if exc.code != NO_NEED_TO_CHANGE_MARGIN_TYPE:
                self.note_error(exc)  # e.g. an order still open: the plan goes ahead on the current type
                return
        self.margin_type = margin_type

    async def set_leverage(self, leverage: int) -> None:
        answer = await self.signed("POST", "/fapi/v1/leverage", {"symbol": self.symbol, "leverage": leverage})
        self.leverage = int(answer["leverage"])
        self.max_notional = dec(answer.get("maxNotionalValue"))

    async def step(self) -> None:
        if self.symbol not in self.rules:  # delisted: start over on another one
            self.symbol = self._pick()
            self.momentum = Momentum(self.params.fast, self.params.slow)
            self.plan = TrendPlan(0, self.params.leverage, self.params.exposure)
            self.leverage = self.max_notional = self.margin_type = None
        view = self.market.view(self.symbol, max_age=MAX_MARK_AGE) if self.symbol else None
        if view is None:
            return
        await self.maybe_refill()
        self.momentum.update(view.mark)
        direction = trend_direction(signal_bps=self.momentum.signal_bps, current=self.plan.direction,
                                    params=self.params, hold=self.plan.reckless)
        if self.portfolio.liquidations > self._liquidations:
            self._liquidations = self.portfolio.liquidations
            self.full = True  # burnt: sit this trend out instead of betting again at once
        if direction != self.plan.direction:
            self.plan = trend_plan(rng=self.rng, direction=direction, params=self.params)
            self.full = False
            if self.plan.reckless:
                logger.info("%s: reckless %s %s, isolated at %dx, %sx its wallet", self.name,
                            "long" if direction > 0 else "short", self.symbol, self.plan.leverage,
                            fmt(self.plan.exposure))
        position = self.portfolio.position(self.symbol)
        if direction != 0 and position == 0 and self.margin_type != self.plan.margin_type:
            await self.set_margin_type(self.plan.margin_type)  # only while flat
        if direction != 0 and self.leverage != self.plan.leverage:
            try:
                await self.set_leverage(self.plan.leverage)
            except ApiError as exc:  # e.g. the open position is too large for that bracket
                self.note_error(exc)
                self.plan = replace(self.plan, leverage=self.leverage or self.params.leverage)
        rules = self.rules.get(self.symbol)
        if rules is None:
            return
        target = trend_target(rules=rules, plan=self.plan, wallet=self.portfolio.wallet, mark=view.mark,
                              max_notional=self.max_notional if self.leverage == self.plan.leverage else None)
        intent = trend_order(rules=rules, position=position, target=target, mark=view.mark, params=self.params)
        if intent is None or (self.full and not intent.reduce_only):
            return
        try:
            await self.send_order(self.symbol, intent, "F", wait_result=True)
        except ApiError as exc:
            if exc.code == MARGIN_INSUFFICIENT and intent.reduce_only:
                self.stuck = True
            elif exc.code in (MARGIN_INSUFFICIENT, RISK_TOO_HIGH, IN_LIQUIDATION):
                self.full = True  # as far as this trend goes
            self.note_error(exc)
        else:
            self.stuck = False
        # The next decision works from the server's position, not from events still on their way
        # (a follower acting every second on a stale position sends reduce-only orders too large).
        self.portfolio.load_account(await self.signed("GET", "/fapi/v2/account", weight=5))

    async def maybe_refill(self) -> None:
        """A wiped-out follower (wallet under `refill_below` of its start, and flat or unable to
        pay the fee of closing) gets topped up."""
        if self.faucet is None or self.initial_wallet <= 0 or not self.portfolio.loaded:
            return
        if self.portfolio.wallet >= self.initial_wallet * self.refill_below:
            return
        if self.portfolio.position(self.symbol) != 0 and not self.stuck:
            return
        if time.monotonic() - self._refilled_at < 60:
            return
        self._refilled_at = time.monotonic()
        amount = await self.faucet(self.name)
        if amount:
            self.stats.refills += 1
            self.portfolio.wallet += amount
            logger.info("%s: wallet topped up by %s USDT from the demo faucet", self.name, fmt(amount))
