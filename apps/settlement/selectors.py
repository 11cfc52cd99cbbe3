"""Reads for funding: the interval grid, impact prices from the book, premium averages,
the predicted rate of the current interval, and the published rate history.

The predicted rate is cached in Redis by the sampler (`funding:predicted:<SYMBOL>`,
refreshed every sample, short TTL); `funding_predicted_many` reads it with one MGET and
recomputes from the stored samples for the misses, so it stays right when Redis was
flushed or the sampler stopped.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.contracts.models import Contract, ContractStatus, ContractType, FundingPolicy
from apps.marketdata.engine.quotes import ms_to_datetime, to_ms
from apps.marketdata.selectors import funding_time_next
from exchange.redis import get_redis

from . import formulas
from .models import FundingRate, FundingSettlement, PremiumSample, SettlementStatus

PREDICTED_KEY = "funding:predicted:{symbol}"
PREDICTED_TTL_SECONDS = 30
# Perpetuals that fund: listed and not finished.
FUNDING_STATUSES = (ContractStatus.TRADING, ContractStatus.CLOSE_ONLY, ContractStatus.HALTED)


def sample_seconds() -> int:
    return int(getattr(settings, "FUNDING_SAMPLE_SECONDS", 5))


def funding_interval(contract: Contract) -> timedelta:
    return timedelta(hours=contract.funding_interval_hours)


def funding_time_of(*, contract: Contract, at: datetime) -> datetime:
    """The funding time that ends the interval holding `at` (at == a funding time belongs to the next)."""
    return funding_time_next(contract=contract, now=at)


def funding_time_is_valid(*, contract: Contract, funding_time: datetime) -> bool:
    return funding_time_of(contract=contract, at=funding_time - timedelta(microseconds=1)) == funding_time


def funding_contracts() -> list[Contract]:
    return list(
        Contract.objects.filter(contract_type=ContractType.PERPETUAL, status__in=FUNDING_STATUSES)
        .select_related("settle_asset")
        .order_by("symbol")
    )


# -- the book ------------------------------------------------------------------------------

IMPACT_LEVELS_SQL = """
WITH book AS (
    SELECT o.side, o.price, SUM(o.quantity - o.executed_qty) AS qty
    FROM trading_order o
    WHERE o.contract_id = %(contract)s AND o.status IN ('NEW', 'PARTIALLY_FILLED')
      AND o.priority IS NOT NULL AND o.price IS NOT NULL
    GROUP BY o.side, o.price
), walked AS (
    SELECT side, price, qty,
           SUM(qty * price * %(cs)s) OVER (
               PARTITION BY side
               ORDER BY CASE WHEN side = 'BUY' THEN -price ELSE price END
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
           ) - qty * price * %(cs)s AS notional_before
    FROM book WHERE qty > 0
)
SELECT side, price, qty FROM walked
WHERE notional_before < %(notional)s
ORDER BY side, CASE WHEN side = 'BUY' THEN -price ELSE price END
"""


def impact_prices(*, contract: Contract, notional: Decimal | None = None) -> tuple[Decimal | None, Decimal | None]:
    """(impact bid, impact ask): the average fill price of the contract's impact notional.

    One query: resting open quantity per price level, a running notional per side
    best-first (window sum), and only the levels a market order of the impact notional
    would touch (the notional before the level is below the target). The last level's
    partial fill and the average are done in Decimal by `formulas.impact_price`. A side
    that cannot fill the whole notional has no impact price (None).
    """
    notional = contract.impact_notional if notional is None else notional
    with connection.cursor() as cursor:
        cursor.execute(IMPACT_LEVELS_SQL, {"contract": contract.pk, "cs": contract.contract_size, "notional": notional})
        rows = cursor.fetchall()
    bids = [(price, qty) for side, price, qty in rows if side == "BUY"]
    asks = [(price, qty) for side, price, qty in rows if side == "SELL"]
    cs = contract.contract_size
    return (formulas.impact_price(bids, notional=notional, contract_size=cs),
            formulas.impact_price(asks, notional=notional, contract_size=cs))


# -- rates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateQuote:
    """A funding rate with what it was made of."""

    funding_time: datetime
    rate: Decimal
    premium_index: Decimal | None  # the weighted mean of the interval's premiums
    samples: int
    previous_rate: Decimal | None
    policy: str


def premium_average(*, contract: Contract, funding_time: datetime) -> tuple[Decimal | None, int]:
    """The interval's Σ i·Pᵢ / Σ i and its sample count (exact sums in SQL, the division in Decimal)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT SUM(slot * premium), SUM(slot), COUNT(*) FROM {PremiumSample._meta.db_table}
                WHERE contract_id = %s AND funding_time = %s""",
            [contract.pk, funding_time],
        )
        weighted, weights, count = cursor.fetchone()
    return formulas.weighted_mean_of_sums(weighted, weights), int(count or 0)


def rate_previous(*, contract: Contract, funding_time: datetime) -> Decimal | None:
    """The last published rate before this funding time (the EMA's previous value)."""
    return (
        FundingRate.objects.filter(contract=contract, funding_time__lt=funding_time)
        .order_by("-funding_time").values_list("funding_rate", flat=True).first()
    )


def rate_quote(*, contract: Contract, funding_time: datetime) -> RateQuote:
    """The rate of the interval ending at `funding_time`, from the samples stored so far."""
    premium, count = premium_average(contract=contract, funding_time=funding_time)
    previous = None
    if contract.funding_policy == FundingPolicy.IMPACT:
        rate = formulas.rate_impact(premium=premium, interest=contract.interest_rate,
                                    floor=contract.funding_rate_floor, cap=contract.funding_rate_cap)
    else:
        previous = rate_previous(contract=contract, funding_time=funding_time)
        rate = formulas.rate_seed(premium=premium, interest=contract.interest_rate,
                                  floor=contract.funding_rate_floor, cap=contract.funding_rate_cap, previous=previous)
    return RateQuote(funding_time=funding_time, rate=rate, premium_index=premium, samples=count,
                     previous_rate=previous, policy=contract.funding_policy)


def funding_predicted(*, contract: Contract, now: datetime | None = None) -> RateQuote | None:
    return funding_predicted_many(contracts=[contract], now=now).get(contract.symbol)


def funding_predicted_many(*, contracts: Iterable[Contract], now: datetime | None = None) -> dict[str, RateQuote]:
    """symbol -> predicted rate of the current interval, for the perpetuals among `contracts`."""
    now = now or timezone.now()
    perpetuals = [c for c in contracts if c.is_perpetual]
    if not perpetuals:
        return {}
    out: dict[str, RateQuote] = {}
    try:
        cached = get_redis().mget([PREDICTED_KEY.format(symbol=c.symbol) for c in perpetuals])
    except Exception:
        cached = [None] * len(perpetuals)
    for contract, raw in zip(perpetuals, cached, strict=True):
        funding_time = funding_time_of(contract=contract, at=now)
        quote = _predicted_from_json(raw, contract=contract, funding_time=funding_time)
        out[contract.symbol] = quote or rate_quote(contract=contract, funding_time=funding_time)
    return out


def predicted_to_json(*, contract: Contract, quote: RateQuote) -> str:
    return json.dumps({"c": contract.pk, "r": str(quote.rate), "T": to_ms(quote.funding_time), "n": quote.samples,
                       "p": None if quote.premium_index is None else str(quote.premium_index)},
                      separators=(",", ":"))


def predicted_parse(raw) -> dict | None:
    """The cached JSON as a dict with `r` (Decimal) and `T` (ms), or None when unusable."""
    if raw is None:
        return None
    try:
        body = json.loads(raw)
        return {"c": body.get("c"), "r": Decimal(body["r"]), "T": int(body["T"]), "n": int(body.get("n", 0)),
                "p": None if body.get("p") is None else Decimal(body["p"])}
    except (ValueError, KeyError, TypeError, ArithmeticError):
        return None


def _predicted_from_json(raw, *, contract: Contract, funding_time: datetime) -> RateQuote | None:
    body = predicted_parse(raw)
    # A key of another database on the same Redis, or of the interval before: recompute.
    if body is None or body["c"] not in (None, contract.pk) or body["T"] != to_ms(funding_time):
        return None
    return RateQuote(funding_time=ms_to_datetime(body["T"]), rate=body["r"], premium_index=body["p"],
                     samples=body["n"], previous_rate=None, policy=contract.funding_policy)


# -- history ---------------------------------------------------------------------------------


def funding_rate_history(*, contract: Contract | None, start_ms: int | None, end_ms: int | None,
                         limit: int) -> Sequence[FundingRate]:
    """Binance semantics: oldest first; with no time bounds the most recent `limit` rows;
    with bounds, the first `limit` rows from the start."""
    rows = FundingRate.objects.select_related("contract")
    if contract is not None:
        rows = rows.filter(contract=contract)
    if start_ms is not None:
        rows = rows.filter(funding_time__gte=ms_to_datetime(start_ms))
    if end_ms is not None:
        rows = rows.filter(funding_time__lte=ms_to_datetime(end_ms))
    if start_ms is None and end_ms is None:
        latest = list(rows.order_by("-funding_time", "-contract__symbol")[:limit])
        return latest[::-1]
    if start_ms is None:
        latest = list(rows.order_by("-funding_time", "-contract__symbol")[:limit])
        return latest[::-1]
    return list(rows.order_by("funding_time", "contract__symbol")[:limit])


def settlement_last_done(*, contract: Contract) -> datetime | None:
    return (
        FundingSettlement.objects.filter(contract=contract, status=SettlementStatus.DONE)
        .order_by("-funding_time").values_list("funding_time", flat=True).first()
    )


def funding_times_due(*, contract: Contract, now: datetime, max_catch_up: int = 90) -> list[datetime]:
    """Funding times up to `now` not settled yet, oldest first (missed ones included).

    Starts after the last settled time, or at the first funding time after the contract
    began trading (onboard time, else creation) for a contract never settled, plus any
    recorded run not settled yet; at most `max_catch_up` times per call (the next call
    continues).
    """
    last = settlement_last_done(contract=contract)
    start = last if last is not None else (contract.onboard_time or contract.created_at)
    # Runs recorded but not settled (a failure, an interrupted manual request) come first.
    due = set(
        FundingSettlement.objects.filter(contract=contract, funding_time__lte=now)
        .exclude(status=SettlementStatus.DONE).values_list("funding_time", flat=True)
    )
    t = funding_time_of(contract=contract, at=start)
    while t <= now and len(due) < max_catch_up:
        due.add(t)
        t = funding_time_of(contract=contract, at=t)
    return sorted(due)[:max_catch_up]
