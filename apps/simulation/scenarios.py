"""Named market scenarios run start to finish on the simulated clock.

`scenario_run` builds a fresh market (see `world.py`), funds the participants, then
steps the clock: each tick prices the market (the scenario's venue events included),
sweeps and advances liquidations and settles any funding time that has come; each
step (several ticks) lets every agent act in a seeded random order and runs the
matcher until the journal is empty.
It records a time series for the plots, and at the end runs every ledger invariant,
reads the summary from the database and writes the report (`report.py`).

Every scenario also lists a delivery contract that goes close-only and delivers during the
run (settled by `delivery_advance` on the simulated clock) while two holders keep
opposite positions in it; the quarterly roll is off (`DELIVERY_ROLL_ENABLED`).

Scenarios: `calm` (low volatility, both sides hold leverage), `trend` (a steady rise of
15% over the run), `crash` (−30% in 10 minutes with the largest venue out and an
outlier quote from another in the middle of it; leveraged longs), `squeeze` (+25% in 5
minutes against leveraged shorts).
"""
from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from django.test.utils import override_settings

from apps.contracts.models import Contract
from apps.marketdata.engine import Crash, Outage, Outlier
from apps.marketdata.engine.quotes import to_ms
from apps.settlement.delivery import delivery_list

from .agents import DeliveryHolder, Holder, Market, MarketMaker, Taker, TrendFollower
from .recorder import Recorder
from .world import SYMBOL, PriceModel, SimExchange, market_create, participant_create, tasks_in_process

D = Decimal
# Fixed simulated starts, so a seed fixes the whole run. The small run has its event just
# before the 00:00 funding time and ends with the delivery of BTCUSDT_260302 at 00:10 (close-only
# from 23:40, two minutes after the start); the full one crosses six funding times.
SMALL_START = datetime(2026, 3, 1, 23, 38, tzinfo=UTC)
FULL_START = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)


@dataclass(frozen=True)
class Size:
    start: datetime
    minutes: int
    step_seconds: int  # agents act once per step
    tick_seconds: int  # prices, liquidation sweeps and funding run once per tick
    makers: int
    takers: int
    trend_followers: int
    holders: int
    event_minute: int  # when the scenario's event starts, minutes after the start
    sample_every: int  # steps between margin-ratio samples
    delivery_minute: int  # the delivery contract delivers this many minutes after the start
    settlement_window: int  # minutes of index averaged into its settlement price


SIZES = {
    "small": Size(start=SMALL_START, minutes=32, step_seconds=60, tick_seconds=30, makers=2, takers=1,
                  trend_followers=2, holders=4, event_minute=12, sample_every=4, delivery_minute=32,
                  settlement_window=15),
    "full": Size(start=FULL_START, minutes=360, step_seconds=30, tick_seconds=10, makers=4, takers=4,
                 trend_followers=6, holders=10, event_minute=120, sample_every=10, delivery_minute=270,
                 settlement_window=60),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    prices: PriceModel
    holders_long: float  # share of leveraged holders that are long
    taker_bias: float = 0.5

    def venue_events(self, *, start: datetime, size: Size):
        at = to_ms(start + timedelta(minutes=size.event_minute))
        minute = 60_000
        if self.name == "crash":
            return (Crash(SYMBOL, at=at, duration_ms=10 * minute, drop=0.30),
                    Outage("binance", at=at + 3 * minute, duration_ms=5 * minute),
                    Outlier("okx", SYMBOL, at=at + 5 * minute, factor=1.25))
        if self.name == "squeeze":
            return (Crash(SYMBOL, at=at, duration_ms=5 * minute, drop=-0.25),)
        if self.name == "trend":
            return (Crash(SYMBOL, at=to_ms(start), duration_ms=size.minutes * minute, drop=-0.15),)
        return ()


SCENARIOS = {
    "calm": Scenario("calm", "Low volatility; leveraged holders on both sides.",
                     PriceModel(volatility=0.3, jump_rate_per_day=1.0, jump_sd=0.003), holders_long=0.5),
    "trend": Scenario("trend", "A steady 15% rise over the run; trend followers ride it, shorts suffer.",
                      PriceModel(volatility=0.5), holders_long=0.5, taker_bias=0.55),
    "crash": Scenario("crash", "−30% in 10 minutes, the largest venue (binance) out for 5 minutes in the "
                      "middle and an outlier quote (+25%) from okx; leveraged longs.",
                      PriceModel(volatility=0.6), holders_long=0.75),
    "squeeze": Scenario("squeeze", "+25% in 5 minutes against leveraged shorts.",
                        PriceModel(volatility=0.6), holders_long=0.25, taker_bias=0.6),
}


def agent_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big")


def agents_create(*, contract, delivery, size: Size, scenario: Scenario, seed: int) -> list:
    def make(cls, name, deposit, leverage, *, on=contract, **params):
        user = participant_create(name=name, deposit=D(deposit), contract=on, leverage=leverage)
        return cls(name=name, user=user, rng=random.Random(agent_seed(seed, name)), **params)

    agents = [make(MarketMaker, f"mm{i}", "3000000", 10, size=D("0.2") + D("0.1") * i,
                   half_spread=D("0.0003") * (i + 1)) for i in range(size.makers)]
    agents += [make(Taker, f"taker{i}", "200000", 5, bias=scenario.taker_bias, rate=0.6)
               for i in range(size.takers)]
    agents += [make(TrendFollower, f"trend{i}", "6000", 10, lookback=6 + 4 * i) for i in range(size.trend_followers)]
    longs = round(size.holders * scenario.holders_long)
    agents += [make(Holder, f"holder{i}", "4000", 25, direction=1 if i < longs else -1, size=D("0.8"))
               for i in range(size.holders)]
    agents += [make(DeliveryHolder, f"delivery{i}", "50000", 5, on=delivery, contract=delivery,
                    direction=1 if i == 0 else -1) for i in range(2)]
    return agents


def delivery_contract_create(*, size: Size) -> Contract:
    """List the contract that delivers during the run (the listing service; its scheduler opens it)."""
    due = size.start + timedelta(minutes=size.delivery_minute)
    contract = delivery_list(base_symbol=SYMBOL, delivery_time=due, now=size.start)
    Contract.objects.filter(pk=contract.pk).update(settlement_window_minutes=size.settlement_window)
    contract.settlement_window_minutes = size.settlement_window
    return contract


def scenario_run(*, name: str, seed: int, size: str = "small", out: Path | None = None) -> dict:
    """Run scenario `name` on the current (empty, migrated) database; returns the summary."""
    from .report import report_write
    from .summary import summary_from_database

    scenario, config = SCENARIOS[name], SIZES[size]
    started = time.perf_counter()
    # The scenario lists its own delivery contract; the quarterly roll would add two more
    # contracts nobody trades (the soak keeps it on).
    with tasks_in_process(), override_settings(DELIVERY_ROLL_ENABLED=False):
        contract = market_create(start=config.start, insurance_fund=D("1000000"))
        delivery = delivery_contract_create(size=config)
        exchange = SimExchange(start=config.start, seed=seed, prices=scenario.prices,
                               events=scenario.venue_events(start=config.start, size=config))
        exchange.deliver()  # the scheduler opens the delivery contract
        agents = agents_create(contract=contract, delivery=delivery, size=config, scenario=scenario, seed=seed)
        recorder = Recorder(contract=contract, users=[a.user for a in agents])
        order_rng = random.Random(agent_seed(seed, "order"))
        marks: list[Decimal] = []
        steps = config.minutes * 60 // config.step_seconds
        for step in range(steps):
            for _ in range(config.step_seconds // config.tick_seconds):
                exchange.advance(config.tick_seconds)
                exchange.tick_prices()
                exchange.liquidate()
                exchange.fund()
                exchange.deliver()
            mark = exchange.mark(contract)
            if mark is None:
                continue
            marks.append(mark)
            market = Market(contract=contract, step=step, marks=marks[-60:])
            for agent in order_rng.sample(agents, len(agents)):
                agent.act(market)
            exchange.match()
            recorder.sample(exchange, ratios=step % config.sample_every == 0 or step == steps - 1)
    summary = summary_from_database(scenario=name, seed=seed, size=size, start=config.start, end=exchange.now)
    rejected = {}
    for agent in agents:
        for code, count in agent.errors.items():
            rejected[str(code)] = rejected.get(str(code), 0) + count
    run = {"wall_seconds": round(time.perf_counter() - started, 1), "steps": steps,
           "step_seconds": config.step_seconds, "agents": len(agents),
           "orders_refused_by_code": dict(sorted(rejected.items())), "description": scenario.description}
    if out is not None:
        report_write(out=Path(out), summary=summary, recorder=recorder, run=run)
    return summary
