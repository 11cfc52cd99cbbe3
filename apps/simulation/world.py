"""The simulated exchange: one process, one simulated clock, the real services.

`market_create` lists what a fresh simulation trades (a BTCUSDT perpetual funding every
hour — the shortest interval a contract allows — with the published BTC brackets, the
system accounts and a seeded insurance fund) and `participant_create` funds a user.
`SimExchange` runs the exchange's processes in-process, each through the function its
worker runs, with `now` taken from the simulated clock:

- pricefeed: `PriceFeed.tick(now=...)` over seeded simulated venues (scenario events —
  crash, outage, outlier — are added to the source), then the funding premium sample;
- matcher: leases and books rebuilt by `Matcher.acquire_leases` as the worker does on
  start, then `batch_process` per book until no command is pending;
- liquidation: `liquidation_sweep` (screen, start, advance) and the matcher's
  after-batch kick, which runs in-process because Celery tasks run eagerly here;
- funding: `funding_settle(now=...)` for every due funding time (`funding_times_due`);
- delivery: `delivery_advance(now=...)` (lifecycle, settlement, the roll); contracts it
  lists or opens are taken on by the matcher and the (restarted) pricefeed.

`restart()` drops all in-process state (books, pricing pipelines, anomaly state,
process caches, advisory-lock leases) and rebuilds it from the database, which is
what a crash and restart of those processes does.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import connection

from apps.contracts.models import Contract, ContractStatus, ContractType
from apps.contracts.services import contract_create, tiers_from_brackets
from apps.ledger.models import USER_KINDS, AccountKind, Asset, TransactionKind
from apps.ledger.services import Leg, ledger_post, system_account, wallet_deposit
from apps.liquidation.models import Liquidation, LiquidationStatus
from apps.liquidation.services import liquidation_sweep, liquidations_advance
from apps.marketdata.engine import Crash, Outage, Outlier, SimulatedVenues, SymbolSpec, VenueSpec
from apps.marketdata.engine.quotes import to_ms
from apps.marketdata.feed import SIMULATED_VENUES, PriceFeed
from apps.marketdata.selectors import funding_time_next, price_latest
from apps.marketdata.services import price_cache_clear
from apps.ops.demo import BTC_BRACKETS
from apps.positions.services import leverage_change
from apps.settlement.selectors import funding_contracts, funding_times_due
from apps.settlement.delivery import delivery_advance
from apps.settlement.services import funding_settle, premium_sample_take
from apps.trading.matcher import Matcher
from apps.trading.matching import BATCH_LIMIT, batch_process
from apps.trading.models import CommandStatus
from apps.trading.triggers import waiting_predicate

from .database import process_caches_forget

logger = logging.getLogger(__name__)
D = Decimal
SYMBOL = "BTCUSDT"
START_PRICE = D("90000")
MAX_MATCH_ROUNDS = 50  # batches per book per call: liquidation kicks can chain a few


@dataclass(frozen=True)
class PriceModel:
    """Dynamics of the simulated venues (annual volatility, jumps per day, jump size)."""

    volatility: float = 0.6
    jump_rate_per_day: float = 3.0
    jump_sd: float = 0.01


def market_create(*, start: datetime, insurance_fund: Decimal) -> Contract:
    """Assets, system accounts, the BTCUSDT perpetual (hourly funding) and the insurance fund."""
    usdt, _ = Asset.objects.get_or_create(code="USDT", defaults={"name": "Tether USD", "precision": 8})
    btc, _ = Asset.objects.get_or_create(code="BTC", defaults={"name": "Bitcoin", "precision": 8})
    for kind in AccountKind:
        if kind not in USER_KINDS:
            system_account(kind)
    contract = contract_create(
        tiers=tiers_from_brackets(BTC_BRACKETS), symbol=SYMBOL, contract_type=ContractType.PERPETUAL,
        status=ContractStatus.TRADING, base_asset=btc, quote_asset=usdt, settle_asset=usdt,
        funding_interval_hours=1, onboard_time=start, impact_notional=D("25000"),
    )
    ledger_post(kind=TransactionKind.INSURANCE, legs=[
        Leg(system_account(AccountKind.INSURANCE_FUND), usdt, insurance_fund),
        Leg(system_account(AccountKind.EXTERNAL), usdt, -insurance_fund),
    ], idempotency_key="sim:insurance-fund", memo="simulation: initial insurance fund")
    return contract


def participant_create(*, name: str, deposit: Decimal, contract: Contract, leverage: int):
    user = get_user_model().objects.create_user(username=name, password=None)
    wallet_deposit(user=user, asset=contract.settle_asset, amount=deposit, idempotency_key=f"sim:deposit:{name}")
    leverage_change(user=user, contract=contract, leverage=leverage)
    return user


@contextlib.contextmanager
def tasks_in_process():
    """Celery tasks (the matcher's liquidation kick) run inline, as a worker would run them at once."""
    from exchange.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = before


class SimExchange:
    """The exchange's processes driven by one simulated clock; see the module docstring."""

    def __init__(self, *, start: datetime, seed: int, prices: PriceModel = PriceModel(),
                 events: tuple[Crash | Outage | Outlier, ...] = ()) -> None:
        self.now = start
        self.seed = seed
        self.prices = prices
        self.events = events
        self.restarts = 0
        self.feed: PriceFeed | None = None
        self.source: SimulatedVenues | None = None
        self.matcher: Matcher | None = None
        self._next_funding: datetime | None = None
        self._delivered_minute: datetime | None = None
        price_cache_clear()  # snapshots another database left on this Redis are not ours
        self._start()

    # -- processes -------------------------------------------------------------------------

    def _start(self) -> None:
        """What the matcher and the pricefeed do when their processes start."""
        process_caches_forget()
        self.matcher = Matcher(None)
        self.matcher.acquire_leases()
        self._start_feed()

    def _start_feed(self) -> None:
        feed = PriceFeed(source="simulated", seed=self.seed, interval=1.0)
        feed.setup(now_ms=to_ms(self.now))
        # The venues are the outside world: they go on through our restarts, so one source serves them all.
        if self.source is None:
            self.source = self._source(feed)
        feed.source = self.source
        self.feed = feed

    def _source(self, feed: PriceFeed) -> SimulatedVenues:
        """Seeded venues starting at the stored index (or the start price) with the scenario's events."""
        specs = []
        for source_symbol in sorted({f.source_symbol for f in feed.feeds.values()}):
            contracts = [f.contract for f in feed.feeds.values() if f.source_symbol == source_symbol]
            snapshot = next((s for s in (price_latest(contract=c) for c in contracts) if s is not None), None)
            start = snapshot.index_price if snapshot is not None else START_PRICE
            specs.append(SymbolSpec(source_symbol, start, price_places=1, volatility=self.prices.volatility,
                                    jump_rate_per_day=self.prices.jump_rate_per_day, jump_sd=self.prices.jump_sd))
        venues = sorted({v for f in feed.feeds.values() for v in f.pipeline.index.weights})
        venue_specs = [VenueSpec(v, **SIMULATED_VENUES.get(v, {"latency_ms": 150, "noise_bps": 3.0})) for v in venues]
        return SimulatedVenues(specs, venue_specs, seed=self.seed, t0=to_ms(self.now) - 5_000, scenarios=self.events)

    def restart(self) -> None:
        """Lose every in-process state and rebuild it from the database."""
        self.feed.shutdown()  # SIGTERM path: the partial minute is stored
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock_all()")  # the dead process's session locks
        self.restarts += 1
        self._start()

    def contracts_opened(self) -> None:
        """Contracts listed or opened: the matcher takes their leases as its worker retries them;
        the pricefeed prices the contracts live when it starts, so it is restarted."""
        self.matcher.acquire_leases()
        self.feed.shutdown()
        self._start_feed()

    # -- one round of each process -------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def tick_prices(self) -> None:
        self.feed.tick(now=self.now)
        for contract in funding_contracts():
            premium_sample_take(contract=contract, now=self.now)

    def match(self) -> int:
        """Run the matcher until no command is pending; returns commands processed.

        The worker is woken by the doorbell; here one look at the journal stands in for it: a
        batch for every book with pending commands or waiting conditional orders (a batch fires
        their triggers), then, while any book has pending commands (past a batch's limit, or
        placed by a liquidation kick after it), a batch for each of those. A book is not asked
        again only to find it has nothing to do (an empty batch costs a transaction), and the
        journal is not looked at again when no batch could have left or caused new commands
        (none was full, none kicked a liquidation: nothing else runs in between here)."""
        processed = 0
        busy = _contracts_with_work()
        for _ in range(MAX_MATCH_ROUNDS):
            engines = [engine for engine in self.matcher.engines.values() if engine.contract.pk in busy]
            if not engines:
                break
            again = False
            for engine in engines:
                result = batch_process(engine)
                if result is not None:
                    processed += result.commands
                    again = again or result.liquidation_kicked or result.commands >= BATCH_LIMIT
            if not again:
                break
            busy = _contracts_with_pending()
        return processed

    def liquidate(self, *, rounds: int = 6) -> dict:
        """The beat sweep, then advance what it started through the matcher until it settles (with
        no liquidation active there is nothing to advance: pending orders wait for the next match)."""
        swept = liquidation_sweep()
        for _ in range(rounds):
            if not _liquidating():
                break
            self.match()
            if not _liquidating():
                break
            liquidations_advance()
        return swept

    def fund(self) -> list:
        """Settle every funding time that has come on the simulated clock (beat's job, each minute)."""
        if self._next_funding is not None and self.now < self._next_funding:
            return []
        done = []
        upcoming = []
        for contract in funding_contracts():
            for funding_time in funding_times_due(contract=contract, now=self.now):
                done.append(funding_settle(contract=contract, funding_time=funding_time, now=self.now))
            upcoming.append(funding_time_next(contract=contract, now=self.now))
        self._next_funding = min(upcoming) if upcoming else None
        return done

    def deliver(self, *, force: bool = False) -> list[str]:
        """The delivery job (lifecycle steps, settlement, the roll) at the simulated time; like
        beat, once a minute (`force`: now, as ops' "settle now" would)."""
        minute = self.now.replace(second=0, microsecond=0)
        if minute == self._delivered_minute and not force:
            return []
        self._delivered_minute = minute
        steps = delivery_advance(now=self.now)
        if any(step.startswith("listed ") or step.endswith(f": {ContractStatus.TRADING}") for step in steps):
            self.contracts_opened()
        elif steps:
            self.matcher.acquire_leases()
        return steps

    def mark(self, contract: Contract) -> Decimal | None:
        """The latest published mark (what clients see)."""
        snapshot = price_latest(contract=contract)
        return snapshot.mark_price if snapshot is not None else None


# Raw SQL: these run on every match event, and the ORM's query compilation cost more than the queries.
# The constants are inlined so the planner matches the partial indexes.
PENDING_SQL = f"SELECT DISTINCT contract_id FROM trading_ordercommand WHERE status = '{CommandStatus.PENDING}'"
WORK_SQL = f"{PENDING_SQL} UNION SELECT o.contract_id FROM trading_order o WHERE {waiting_predicate('o')}"


def _contract_ids(sql: str) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return {row[0] for row in cursor.fetchall()}


def _contracts_with_pending() -> set[int]:
    return _contract_ids(PENDING_SQL)


def _contracts_with_work() -> set[int]:
    """Contracts with pending journal commands or waiting conditional orders (triggers fire in a batch)."""
    return _contract_ids(WORK_SQL)


def _liquidating() -> bool:
    return Liquidation.objects.filter(status=LiquidationStatus.ACTIVE).exists()
