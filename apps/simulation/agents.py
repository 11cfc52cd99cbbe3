"""Simulated participants: market makers, takers, leveraged trend followers, holders and
delivery holders.

Each agent is a user with a wallet and trades only through the order-entry services
(`order_place`, `order_amend`, `order_cancel`), exactly what the REST API calls, so
every margin check, freeze and filter applies; a refusal (insufficient margin, a
frozen account during liquidation, the price band) is counted, as a client would see
an error. Every random choice comes from the agent's own `random.Random`, seeded from
the run's seed and the agent's name, so a run is reproducible.
"""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from apps.contracts.models import Contract, ContractStatus
from apps.marketdata.selectors import price_latest
from apps.positions.models import Position
from apps.trading.models import OPEN_STATUSES, Order, OrderType
from apps.trading.services import order_amend, order_cancel, order_place
from exchange.errors import ExchangeError

D = Decimal
ZERO = D(0)


@dataclass
class Market:
    """What an agent sees this step: the contract, the clock and the recent marks."""

    contract: object
    step: int
    marks: list[Decimal]  # oldest first, the latest last

    @property
    def mark(self) -> Decimal:
        return self.marks[-1]


@dataclass
class Agent(ABC):
    name: str
    user: object
    rng: random.Random
    errors: Counter = field(default_factory=Counter)
    placed: int = 0
    _n: int = 0

    @abstractmethod
    def act(self, market: Market) -> None:
        """Look at the market and place, amend or cancel orders."""

    # -- helpers around the order-entry services ---------------------------------------------

    def _client_id(self) -> str:
        self._n += 1
        return f"sim-{self.name}-{self._n}"

    def submit(self, call, **params):
        try:
            result = call(user=self.user, **params)
        except ExchangeError as exc:
            self.errors[int(exc.code)] += 1
            return None
        self.placed += 1
        return result

    def position(self, contract) -> Decimal:
        size = Position.objects.filter(user=self.user, contract=contract).values_list("size", flat=True).first()
        return size if size is not None else ZERO

    def market_order(self, market: Market, side: str, quantity: Decimal, *, reduce_only: bool = False):
        quantity = _lots(quantity, market.contract)
        if quantity <= 0:
            return None
        return self.submit(order_place, contract=market.contract, side=side, order_type=OrderType.MARKET,
                           quantity=quantity, reduce_only=reduce_only, client_order_id=self._client_id())


def _lots(quantity: Decimal, contract) -> Decimal:
    return (quantity / contract.lot_size).to_integral_value(ROUND_FLOOR) * contract.lot_size


def _tick(price: Decimal, contract, rounding) -> Decimal:
    return (price / contract.tick_size).to_integral_value(rounding) * contract.tick_size


@dataclass
class MarketMaker(Agent):
    """Quotes `levels` bids and asks around the mark; stops adding to a side past its inventory limit."""

    levels: int = 2
    size: Decimal = D("0.2")
    half_spread: Decimal = D("0.0004")  # of the mark, to the first level
    step: Decimal = D("0.0010")  # between levels
    inventory_limit: Decimal = D("4")
    skew: Decimal = D("0.0005")  # quotes lean against inventory by this much per inventory_limit
    # A quote is moved only when it is off its target by more than this share of the mark:
    # requoting every order at every step would be most of the run's work and no more realistic.
    tolerance: Decimal = D("0.0006")

    def act(self, market: Market) -> None:
        contract, mark = market.contract, market.mark
        inventory = self.position(contract)
        lean = -self.skew * inventory / self.inventory_limit
        by_slot = {o["client_order_id"].rsplit("-", 1)[0]: o for o in Order.objects.filter(
            user=self.user, contract=contract, status__in=OPEN_STATUSES, order_type=OrderType.LIMIT,
        ).values("pk", "client_order_id", "price", "executed_qty")}
        for side in ("BUY", "SELL"):
            blocked = inventory >= self.inventory_limit if side == "BUY" else inventory <= -self.inventory_limit
            for level in range(self.levels):
                slot = f"q-{self.name}-{side[0]}{level}"
                current = by_slot.get(slot)
                if blocked:
                    if current is not None:
                        self.submit(order_cancel, contract=contract, order_id=current["pk"])
                    continue
                offset = self.half_spread + self.step * level
                size = self.size * (1 + D(level) / 2)
                if side == "BUY":
                    price = _tick(mark * (1 - offset + lean), contract, ROUND_FLOOR)
                else:
                    price = _tick(mark * (1 + offset + lean), contract, ROUND_CEILING)
                if current is None:
                    self._n += 1
                    self.submit(order_place, contract=contract, side=side, quantity=size, price=price,
                                client_order_id=f"{slot}-{self._n}")
                elif abs(current["price"] - price) > mark * self.tolerance:
                    self.submit(order_amend, contract=contract, order_id=current["pk"], price=price,
                                quantity=current["executed_qty"] + size)


@dataclass
class Taker(Agent):
    """Sends a market order with probability `rate` per step, random side and size."""

    rate: float = 0.5
    max_size: Decimal = D("0.3")
    bias: float = 0.5  # probability of a buy

    def act(self, market: Market) -> None:
        if self.rng.random() >= self.rate:
            return
        side = "BUY" if self.rng.random() < self.bias else "SELL"
        size = self.max_size * D(self.rng.randint(1, 100)) / 100
        self.market_order(market, side, size)


@dataclass
class TrendFollower(Agent):
    """Leveraged momentum: long above a rising lookback, short below a falling one."""

    lookback: int = 10
    threshold: Decimal = D("0.002")
    target: Decimal = D("0.5")

    def act(self, market: Market) -> None:
        if len(market.marks) <= self.lookback:
            return
        change = market.mark / market.marks[-1 - self.lookback] - 1
        if abs(change) < self.threshold:
            return
        want = self.target if change > 0 else -self.target
        have = self.position(market.contract)
        gap = want - have
        if abs(gap) * market.mark < 100:
            return
        self.market_order(market, "BUY" if gap > 0 else "SELL", abs(gap))


@dataclass
class Holder(Agent):
    """Opens a leveraged position (direction +1 long, -1 short) and holds it; after losing it
    (liquidated) waits `cooldown` steps before opening again."""

    direction: int = 1
    size: Decimal = D("1")
    cooldown: int = 20
    _held: bool = False
    _flat_steps: int = 0

    def act(self, market: Market) -> None:
        if self.position(market.contract) != 0:
            self._held, self._flat_steps = True, 0
            return
        self._flat_steps += 1
        if self._held and self._flat_steps < self.cooldown:
            return
        self.market_order(market, "BUY" if self.direction > 0 else "SELL", self.size)


@dataclass
class DeliveryHolder(Agent):
    """Trades once on a delivery contract at its mark (a limit at the mark; the opposite holder
    crosses it) and holds the position into delivery."""

    contract: object = None
    direction: int = 1
    size: Decimal = D("0.5")

    def act(self, market: Market) -> None:
        if self.placed:
            return
        contract = Contract.objects.select_related("settle_asset").get(pk=self.contract.pk)  # its status moves
        snapshot = price_latest(contract=contract)
        if contract.status != ContractStatus.TRADING or snapshot is None:
            return
        price = _tick(snapshot.mark_price, contract, ROUND_FLOOR)
        self.submit(order_place, contract=contract, side="BUY" if self.direction > 0 else "SELL",
                    quantity=self.size, price=price, client_order_id=self._client_id())
