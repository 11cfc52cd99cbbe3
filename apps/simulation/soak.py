"""The invariant soak: a long seeded random run of exchange events, checked as it goes.

`soak_run(seed=S, events=N)` draws N events from one `random.Random(S)` on a fresh
database: limit orders (all time-in-force values, some reduce-only), market orders,
all-in market orders at 50x (so that accounts do get liquidated),
stop-market orders, cancels, cancel-alls, amends, leverage changes, deposits, matcher
batches, price ticks (the clock moves 1-60 s; the simulated venues are volatile and
jumpy so accounts do get liquidated), liquidation sweeps, funding (every due funding
time, settled as the clock crosses the hour) and process restarts (`SimExchange.restart`:
the books, the pricing pipelines and every process cache are dropped and rebuilt from
the database; the rebuilt book must hash equal to the one that was dropped). Refusals by
the services (insufficient margin, frozen account, band, ...) are part of the run.

Every `check_every` events and at the end it runs every registered invariant (the
checks of `manage.py check_ledger`) and the C books' own `validate()`. It stops at
the first violation (or unexpected exception) and reports the event number and the
command that replays the run up to that event: the run is a function of the seed, so
`simulate --soak --seed S --events N` reproduces it.

Deliveries: a delivery contract delivering 31 simulated minutes in is listed at the
start and, each time one has been settled, the next a day later (`delivery_list`, the
listing service); orders go to any contract that is TRADING or CLOSE_ONLY, and the delivery job
runs with the beat's cadence (each simulated minute the clock reaches).

After each passing round the hot tables are vacuumed when the server runs without
autovacuum (`apps.ops.maintenance.hot_tables_vacuum`), as autovacuum would: otherwise their dead rows and the
dead entries of their partial indexes slow every event down as the run goes on.
"""
from __future__ import annotations

import random
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from apps.contracts.calendar import delivery_symbol
from apps.contracts.models import Contract, ContractStatus, ContractType
from apps.ledger.models import AccountKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import account_get_or_create, wallet_deposit
from apps.ops.invariants import ALL_CHECKS, run_all_invariants
from apps.ops.maintenance import hot_tables_vacuum
from apps.positions.models import Position
from apps.positions.services import leverage_change
from apps.settlement.delivery import delivery_list
from apps.trading.models import OPEN_STATUSES, Order, OrderType
from apps.trading.services import order_amend, order_cancel, order_place, orders_cancel_all
from exchange.errors import ExchangeError

from .world import SYMBOL, PriceModel, SimExchange, market_create, participant_create, tasks_in_process

D = Decimal
SOAK_START = datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC)
USERS = 12
# Event kinds and their weights (per 1000 events).
WEIGHTS = {
    "limit": 320, "market": 65, "lever_up": 15, "hold_and_close": 10, "stop": 25, "cancel": 140, "cancel_all": 8, "amend": 100, "leverage": 10,
    "deposit": 7, "match": 150, "tick": 110, "sweep": 35, "fund": 10, "restart": 5,
}
TIME_IN_FORCE = ("GTC", "GTC", "GTC", "IOC", "FOK", "GTX")
VOLATILE = PriceModel(volatility=2.5, jump_rate_per_day=40.0, jump_sd=0.012)
# The first delivery contract is close-only one minute in and delivers 31 minutes in; each
# next one a day later (the symbol carries only the date: one delivery per base a day).
FIRST_DELIVERY = timedelta(minutes=31)
NEXT_DELIVERY = timedelta(days=1)
DELIVERY_WINDOW_MINUTES = 30
OPEN_FOR_ORDERS = (ContractStatus.TRADING, ContractStatus.CLOSE_ONLY)


class SoakFailure(Exception):
    pass


@dataclass
class SoakResult:
    seed: int
    events: int  # events run (the failing one included)
    checks_passed: int  # invariant checks that held (each registered check, each round)
    rounds: int
    seconds: float
    counts: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def replay_command(*, seed: int, events: int) -> str:
    return f"python manage.py simulate --soak --seed {seed} --events {events}"


class Soak:
    def __init__(self, *, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.contract = market_create(start=SOAK_START, insurance_fund=D("200000"))
        self.users = []
        for i in range(USERS):
            # Deposits from thin to deep; leverage from 5x to 50x: some accounts will not survive.
            deposit = D(self.rng.choice(("2000", "5000", "20000", "100000", "1000000")))
            leverage = self.rng.choice((5, 10, 20, 25, 50))
            self.users.append(participant_create(name=f"soak{i}", deposit=deposit, contract=self.contract,
                                                 leverage=leverage))
        self._list_delivery(SOAK_START + FIRST_DELIVERY, now=SOAK_START)
        self.exchange = SimExchange(start=SOAK_START, seed=seed, prices=VOLATILE)
        self.exchange.deliver()
        self.exchange.tick_prices()
        self._load_contracts()
        self.orders: list[tuple[object, int, int]] = []  # (user, contract id, order id) of orders maybe open
        self.refusals: Counter = Counter()
        self._kinds = list(WEIGHTS)
        self._weights = list(WEIGHTS.values())

    # -- helpers -------------------------------------------------------------------------------

    def _list_delivery(self, due: datetime, *, now: datetime) -> Contract:
        """List a delivery contract due at `due`, or the first free day after it."""
        while Contract.objects.filter(symbol=delivery_symbol(SYMBOL, due)).exists():
            due += NEXT_DELIVERY
        contract = delivery_list(base_symbol=SYMBOL, delivery_time=due, now=now, template=self.contract)
        Contract.objects.filter(pk=contract.pk).update(settlement_window_minutes=DELIVERY_WINDOW_MINUTES)
        return contract

    def _load_contracts(self) -> None:
        """The contracts orders may go to (their statuses move with the delivery job)."""
        self.contracts = list(Contract.objects.select_related("settle_asset")
                              .filter(status__in=OPEN_FOR_ORDERS).order_by("pk"))

    def _contract(self) -> Contract:
        """The perpetual three times in four, else one of the open delivery contracts."""
        others = [c for c in self.contracts if c.pk != self.contract.pk]
        return self.rng.choice(others) if others and self.rng.random() < 0.25 else self.contract

    def _mark(self, contract: Contract | None = None) -> Decimal:
        return self.exchange.mark(contract or self.contract)

    def _price(self, mark: Decimal, spread: float) -> Decimal:
        tick = self.contract.tick_size
        price = mark * D(str(round(1 + self.rng.uniform(-spread, spread), 6)))
        return max(tick, (price / tick).to_integral_value(ROUND_FLOOR) * tick)

    def _qty(self) -> Decimal:
        return D(self.rng.choice((1, 2, 5, 10, 20, 50, 100, 300, 800))) * self.contract.lot_size

    def _call(self, fn, **params):
        try:
            return fn(**params)
        except ExchangeError as exc:
            self.refusals[int(exc.code)] += 1
            return None

    def _remember(self, user, order) -> None:
        if order is not None:
            self.orders.append((user, order.contract_id, order.pk))

    def _pick_order(self):
        if not self.orders:
            return None
        index = self.rng.randrange(len(self.orders))
        self.orders[index], self.orders[-1] = self.orders[-1], self.orders[index]
        return self.orders[-1]

    def prune(self) -> None:
        """Forget orders that are closed (their ids would only draw refusals)."""
        open_ids = set(Order.objects.filter(pk__in=[pk for _, _, pk in self.orders], status__in=OPEN_STATUSES)
                       .values_list("pk", flat=True))
        self.orders = [o for o in self.orders if o[2] in open_ids]

    # -- events ------------------------------------------------------------------------------------

    def event(self) -> str:
        kind = self.rng.choices(self._kinds, self._weights)[0]
        getattr(self, f"do_{kind}")()
        return kind

    def do_limit(self) -> None:
        contract = self._contract()
        user, mark = self.rng.choice(self.users), self._mark(contract)
        if mark is None:  # listed a moment ago, not priced yet
            return
        side = self.rng.choice(("BUY", "SELL"))
        order = self._call(order_place, user=user, contract=contract, side=side, order_type=OrderType.LIMIT,
                           quantity=self._qty(), price=self._price(mark, 0.012),
                           time_in_force=self.rng.choice(TIME_IN_FORCE), reduce_only=self.rng.random() < 0.08)
        self._remember(user, order)

    def do_market(self) -> None:
        user = self.rng.choice(self.users)
        self._call(order_place, user=user, contract=self._contract(), side=self.rng.choice(("BUY", "SELL")),
                   order_type=OrderType.MARKET, quantity=self._qty(), reduce_only=self.rng.random() < 0.15)

    def do_lever_up(self) -> None:
        """A user goes all in at 50x against another's resting order at the mark: most of the
        wallet as margin, so the next move of a few percent may liquidate it."""
        user, counterparty = self.rng.sample(self.users, 2)
        mark = self._mark()
        if self._call(leverage_change, user=user, contract=self.contract, leverage=50) is None:
            return
        wallet = balance_amount(account=account_get_or_create(kind=AccountKind.WALLET, user=user),
                                asset_code=self.contract.settle_asset.code)
        # 30x the wallet: a market buy holds margin at its protection price (mark + 30%), and
        # beyond 3M of notional 50x is not allowed.
        notional = min(wallet * 30, D("2000000"))
        lots = (notional / mark / self.contract.lot_size).to_integral_value(ROUND_FLOOR)
        quantity = min(lots * self.contract.lot_size, self.contract.market_max_qty)
        if quantity < self.contract.min_qty:
            return
        side = self.rng.choice(("BUY", "SELL"))
        resting = self._call(order_place, user=counterparty, contract=self.contract,
                             side="SELL" if side == "BUY" else "BUY", quantity=quantity,
                             price=self._price(mark, 0))
        self._remember(counterparty, resting)
        self._call(order_place, user=user, contract=self.contract, side=side, order_type=OrderType.MARKET,
                   quantity=quantity)

    def do_hold_and_close(self) -> None:
        """A user with an open position parks most of its free wallet on an order far from the
        mark, then closes the position at the market: a loss beyond what is left free is
        borrowed against that order margin (RECEIVABLE) and repaid when the margin comes back
        (a cancel, a fill, a liquidation's cancels)."""
        user = self.rng.choice(self.users)
        position = Position.objects.filter(user=user, contract=self.contract).exclude(size=0).first()
        if position is None:
            return
        mark = self._mark()
        wallet = balance_amount(account=account_get_or_create(kind=AccountKind.WALLET, user=user),
                                asset_code=self.contract.settle_asset.code)
        side = "BUY" if position.size > 0 else "SELL"  # the same side as the position: it rests
        price = self._price(mark * (D("0.9") if side == "BUY" else D("1.1")), 0)
        per_lot = price * self.contract.lot_size * (D(1) / position.leverage + self.contract.taker_fee_rate)
        lots = (wallet * D("0.9") / per_lot).to_integral_value(ROUND_FLOOR)
        if lots * self.contract.lot_size >= self.contract.min_qty:
            order = self._call(order_place, user=user, contract=self.contract, side=side,
                               quantity=lots * self.contract.lot_size, price=price)
            self._remember(user, order)
        self._call(order_place, user=user, contract=self.contract, side="SELL" if side == "BUY" else "BUY",
                   order_type=OrderType.MARKET, quantity=min(abs(position.size), self.contract.market_max_qty),
                   reduce_only=True)

    def do_stop(self) -> None:
        user, mark = self.rng.choice(self.users), self._mark()
        side = self.rng.choice(("BUY", "SELL"))
        # A buy stop triggers above the mark, a sell stop below it.
        stop = self._price(mark * (D("1.004") if side == "BUY" else D("0.996")), 0.003)
        order = self._call(order_place, user=user, contract=self.contract, side=side,
                           order_type=OrderType.STOP_MARKET, quantity=self._qty(), stop_price=stop,
                           working_type="MARK_PRICE", reduce_only=self.rng.random() < 0.5)
        self._remember(user, order)

    def do_cancel(self) -> None:
        picked = self._pick_order()
        if picked is not None:
            user, _, pk = picked
            self.orders.pop()
            self._call(order_cancel, user=user, order_id=pk)

    def do_cancel_all(self) -> None:
        self._call(orders_cancel_all, user=self.rng.choice(self.users), contract=self._contract())

    def do_amend(self) -> None:
        picked = self._pick_order()
        if picked is None:
            return
        user, contract_id, pk = picked
        row = Order.objects.filter(pk=pk).values("executed_qty", "quantity", "order_type", "status").first()
        contract = next((c for c in self.contracts if c.pk == contract_id), None)
        if row is None or contract is None or row["order_type"] != OrderType.LIMIT \
                or row["status"] not in OPEN_STATUSES:
            return
        mark = self._mark(contract)
        if mark is None:
            return
        quantity = max(row["executed_qty"] + contract.lot_size,
                       row["quantity"] + self.rng.choice((-2, -1, 1, 3)) * contract.lot_size)
        self._call(order_amend, user=user, contract=contract, order_id=pk, quantity=quantity,
                   price=self._price(mark, 0.01))

    def do_leverage(self) -> None:
        self._call(leverage_change, user=self.rng.choice(self.users), contract=self.contract,
                   leverage=self.rng.choice((3, 5, 10, 20, 25, 50)))

    def do_deposit(self) -> None:
        wallet_deposit(user=self.rng.choice(self.users), asset=self.contract.settle_asset,
                       amount=D(self.rng.choice(("500", "5000", "50000"))))

    def do_match(self) -> None:
        self.exchange.match()

    def do_tick(self) -> None:
        self.exchange.advance(self.rng.randint(1, 60))
        self.exchange.tick_prices()
        if self.exchange.deliver():  # something moved: a status, a settlement, a listing
            now = self.exchange.now
            if not Contract.objects.filter(contract_type=ContractType.DELIVERY, status__in=(
                    ContractStatus.PENDING, *OPEN_FOR_ORDERS), delivery_time__lt=now + 2 * NEXT_DELIVERY).exists():
                self._list_delivery(now + NEXT_DELIVERY, now=now)
                self.exchange.contracts_opened()
                self.exchange.deliver(force=True)  # the scheduler opens it
            self._load_contracts()

    def do_sweep(self) -> None:
        self.exchange.liquidate()

    def do_fund(self) -> None:
        self.exchange.fund()

    def do_restart(self) -> None:
        # A book whose contract's orders changed outside the matcher since it was built (an ADL
        # step) is known to be behind: its next batch rebuilds it. Every other one must match.
        versions = dict(Contract.objects.values_list("symbol", "book_version"))
        before = {s: e.book.state_hash() for s, e in self.exchange.matcher.engines.items()
                  if e.book_version == versions[s]}
        self.exchange.restart()
        after = {s: e.book.state_hash() for s, e in self.exchange.matcher.engines.items()}
        # A settled contract's book is not taken up again; every other one must come back equal.
        changed = {s: (before[s], after[s]) for s in before if s in after and before[s] != after[s]}
        if changed:
            raise SoakFailure(f"books rebuilt from the database differ from those in memory: {changed}")
        missing = set(before) - set(after)
        if missing and (lost := sorted(Contract.objects.filter(symbol__in=missing)
                                       .exclude(status=ContractStatus.SETTLED).values_list("symbol", flat=True))):
            raise SoakFailure(f"books not rebuilt after the restart (their contracts are not settled): {lost}")

    # -- checks ------------------------------------------------------------------------------------

    def check(self) -> list[str]:
        problems = [str(v) for v in run_all_invariants()]
        for symbol, engine in self.exchange.matcher.engines.items():
            try:
                engine.book.validate()
            except Exception as exc:  # BookInvariantError
                problems.append(f"book {symbol}: {exc}")
        return problems


def soak_run(*, seed: int, events: int, check_every: int = 10_000, out=None) -> SoakResult:
    """Run the soak on the current (empty, migrated) database; see the module docstring."""
    out = out or sys.stdout
    started = time.perf_counter()
    result = SoakResult(seed=seed, events=0, checks_passed=0, rounds=0, seconds=0.0)
    last_number, last_time = 0, started
    with tasks_in_process():
        soak = Soak(seed=seed)
        for number in range(1, events + 1):
            result.events = number
            try:
                result.counts[soak.event()] += 1
                checking = number % check_every == 0 or number == events
                check_started = time.perf_counter()
                problems = soak.check() if checking else None
            except Exception as exc:
                where = traceback.extract_tb(exc.__traceback__)[-1]
                problems = [f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"]
            if problems is not None:
                if problems:
                    result.failure = (f"event {number}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)
                                      + f"\nreplay: {replay_command(seed=seed, events=number)}")
                    break
                result.rounds += 1
                result.checks_passed += len(ALL_CHECKS)
                soak.prune()
                hot_tables_vacuum()
                now = time.perf_counter()
                elapsed = now - started
                out.write(f"{number} events, {result.rounds} invariant rounds passed "
                          f"({result.checks_passed} checks, this round {now - check_started:.1f} s), "
                          f"{number / elapsed:.1f} events/s ({(number - last_number) / (now - last_time):.1f} "
                          f"since the last round), {elapsed:.0f} s, {soak.exchange.restarts} restarts, "
                          f"simulated {soak.exchange.now:%Y-%m-%d %H:%M:%S}\n")
                out.flush()
                last_number, last_time = number, now
    result.seconds = time.perf_counter() - started
    result.refusals = soak.refusals
    out.write(f"soak seed {seed}: {result.events} events in {result.seconds:.1f} s ({result.rate:.1f} events/s), "
              f"{result.checks_passed} invariant checks passed in {result.rounds} rounds; "
              f"events {dict(sorted(result.counts.items()))}; refusals {dict(sorted(result.refusals.items()))}"
              f"{'' if result.ok else '; FAILED'}\n")
    return result
