"""Run the demo participants in one asyncio process until SIGTERM/SIGINT or `duration`.

`run_traders` reads the symbols' rules from exchangeInfo (waiting for the web server
to come up, and again every 5 minutes to follow listings and deliveries), opens the
market stream with its REST fallback, starts every participant under a supervisor (an unexpected exception is logged and the
participant restarted, never the process ended), logs a one-line status every
minute, and on a stop signal lets the participants finish the request in hand,
then cancels what is left and returns the run summary.
"""
from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import httpx

from .client import ApiError, RestClient, ServerUnavailable, Stopping, WeightBudget, pause
from .participants import MarketMaker, Participant, Taker, TrendFollower
from .provision import Credentials
from .rules import rules_from_exchange_info
from .state import MarketState
from .streams import market_rest_fallback, market_stream

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0
STATUS_EVERY_SECONDS = 60.0
RESTART_DELAY_SECONDS = 5.0
NO_SYMBOLS_RETRY_SECONDS = 30.0
LISTINGS_EVERY_SECONDS = 300.0
ROLE_CLASSES = {"maker": MarketMaker, "taker": Taker, "trend": TrendFollower}


@dataclass(frozen=True)
class RunConfig:
    base_url: str
    seed: int
    duration: float | None = None
    symbols: tuple[str, ...] | None = None
    weight_per_minute: int = 1200
    record_ids: bool = False


def participant_rng(seed: int, name: str) -> random.Random:
    """Each participant's own stream: adding a participant does not change the others' draws."""
    return random.Random(f"{seed}:{name}")


def build_participants(*, config: RunConfig, credentials: list[Credentials], http: httpx.AsyncClient,
                       budget: WeightBudget, market: MarketState, rules, stopping: asyncio.Event,
                       faucet=None) -> list[Participant]:
    out: list[Participant] = []
    trend_slot = 0
    for cred in credentials:
        client = RestClient(http, budget=budget, stopping=stopping, api_key=cred.api_key, secret=cred.secret,
                            name=cred.name)
        common = dict(name=cred.name, short=cred.short, user_id=cred.user_id, client=client, market=market,
                      rules=rules, rng=participant_rng(config.seed, cred.name), stopping=stopping,
                      base_url=config.base_url, record_ids=config.record_ids)
        if cred.role == "trend":

            async def refill(name: str, up_to: Decimal = cred.deposit):
                return await faucet(name, up_to) if faucet is not None else None

            out.append(TrendFollower(slot=trend_slot, initial_wallet=cred.deposit, faucet=refill, **common))
            trend_slot += 1
        else:
            out.append(ROLE_CLASSES[cred.role](**common))
    return out


async def supervise(participant: Participant, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        try:
            await participant.run()
        except Stopping:
            return
        except Exception:  # noqa: BLE001 - a bug in one participant must not end the demo
            logger.exception("%s crashed; restarting it in %.0f s", participant.name, RESTART_DELAY_SECONDS)
            try:
                await pause(stopping, RESTART_DELAY_SECONDS)
            except Stopping:
                return


async def status_log(participants: list[Participant], market: MarketState, stopping: asyncio.Event) -> None:
    while True:
        await pause(stopping, STATUS_EVERY_SECONDS)
        logger.info(
            "demo traders: %d orders acknowledged, %d fills seen, %d liquidation orders seen, %d API refusals; "
            "market stream %s (%d messages)",
            sum(p.stats.orders_acked for p in participants), sum(p.portfolio.fills for p in participants),
            sum(p.portfolio.liquidations for p in participants),
            sum(sum(p.stats.errors.values()) for p in participants),
            "connected" if market.connected else "down", market.ws_messages)


async def run_traders(*, config: RunConfig, credentials: list[Credentials], faucet=None) -> dict:
    """Run until stopped; returns the summary (participants' counts, errors, positions)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if config.duration is not None:
        loop.call_later(config.duration, stopping.set)
    started = datetime.now(UTC)
    summary = {"seed": config.seed, "base_url": config.base_url, "started_at": started.isoformat(),
               "symbols": [], "participants": [], "market": {}}
    budget = WeightBudget(config.weight_per_minute)
    # Generous: a loaded machine makes order entry slow, and a timed-out order is an unknown outcome.
    timeout = httpx.Timeout(30.0, connect=3.0)
    async with httpx.AsyncClient(base_url=config.base_url, timeout=timeout) as http:
        public = RestClient(http, budget=budget, stopping=stopping)
        try:
            rules = await _tradable_rules(public, config, stopping)
        except Stopping:
            return _finish(summary, [], None)
        market = MarketState(sorted(rules))
        participants = build_participants(config=config, credentials=credentials, http=http, budget=budget,
                                          market=market, rules=rules, stopping=stopping, faucet=faucet)
        logger.info("demo traders started (seed %d): %s on %s", config.seed,
                    ", ".join(p.name for p in participants), ", ".join(sorted(rules)))
        background = [
            asyncio.create_task(market_stream(base_url=config.base_url, market=market, stopping=stopping)),
            asyncio.create_task(market_rest_fallback(client=public, market=market, stopping=stopping)),
            asyncio.create_task(status_log(participants, market, stopping)),
            asyncio.create_task(follow_listings(public=public, config=config, rules=rules, market=market,
                                                stopping=stopping)),
        ]
        workers = [asyncio.create_task(supervise(p, stopping)) for p in participants]
        await stopping.wait()
        logger.info("demo traders stopping")
        started_stop = time.monotonic()
        _, pending = await asyncio.wait(workers, timeout=STOP_GRACE_SECONDS)
        for task in [*pending, *background]:
            task.cancel()
        await asyncio.gather(*workers, *background, return_exceptions=True)
        logger.info("demo traders stopped in %.1f s", time.monotonic() - started_stop)
        summary["symbols"] = sorted(rules)
        return _finish(summary, participants, market)


async def follow_listings(*, public: RestClient, config: RunConfig, rules: dict, market: MarketState,
                          stopping: asyncio.Event) -> None:
    """Re-read exchangeInfo now and then: contracts are listed and delivered while the demo runs.
    `rules` is updated in place (every participant holds the same dict)."""
    wanted = list(config.symbols) if config.symbols else None
    while True:
        await pause(stopping, LISTINGS_EVERY_SECONDS)
        try:
            fresh = rules_from_exchange_info(await public.call("GET", "/fapi/v1/exchangeInfo"), symbols=wanted)
        except (ApiError, ServerUnavailable) as exc:
            logger.warning("exchangeInfo failed: %s", exc)
            continue
        if not fresh or fresh.keys() == rules.keys():
            continue
        logger.info("symbols now traded: %s (were %s)", ", ".join(sorted(fresh)), ", ".join(sorted(rules)))
        rules.clear()
        rules.update(fresh)
        market.set_symbols(fresh)


async def _tradable_rules(public: RestClient, config: RunConfig, stopping: asyncio.Event):
    """The symbols to trade, from exchangeInfo; waits while there are none (a process that
    exited here would make honcho stop the whole exchange)."""
    wanted = list(config.symbols) if config.symbols else None
    while True:
        try:
            info = await public.call("GET", "/fapi/v1/exchangeInfo")
        except (ApiError, ServerUnavailable) as exc:
            logger.warning("exchangeInfo failed: %s", exc)
        else:
            rules = rules_from_exchange_info(info, symbols=wanted)
            if rules:
                return rules
            logger.warning("no TRADING symbol to trade (asked for %s); looking again in %.0f s",
                           ", ".join(wanted) if wanted else "any", NO_SYMBOLS_RETRY_SECONDS)
        await pause(stopping, NO_SYMBOLS_RETRY_SECONDS)


def _finish(summary: dict, participants: list[Participant], market: MarketState | None) -> dict:
    summary["stopped_at"] = datetime.now(UTC).isoformat()
    summary["participants"] = [p.summary() for p in participants]
    if market is not None:
        summary["market"] = {"ws_messages": market.ws_messages, "rest_refreshes": market.rest_refreshes,
                             "marks_dropped": market.dropped}
    return summary
