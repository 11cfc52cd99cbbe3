"""Reads behind the public market-data endpoints: book, trades, aggregate trades, klines, tickers.

Everything is computed from PostgreSQL, the source of truth, in one SQL statement per
read (plus the symbol lookup), so each answer is one consistent snapshot:

- The book is the resting orders (NEW / PARTIALLY_FILLED with a book priority), one
  aggregate per side, and its `lastUpdateId` is the highest DONE journal seq of the
  contract (the matcher writes the orders and marks the command DONE in one transaction).
- An aggregate trade is a run of fills of one taker command at one price. Its id `a` is
  the id of its first fill, so `fromId` paging works on it as on trade ids.
- Klines bucket fills with `date_bin` (calendar month: `date_trunc`); empty intervals
  are omitted. A kline is selected by its open time, as Binance does.
- Per contract, trade ids and trade times increase together (one matcher writes a
  contract's trades), which lets the scans stop after `limit` aggregates or klines
  (PostgreSQL's window run condition) instead of reading a whole time range.
"""
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from django.db import connection

from apps.contracts.models import Contract
from apps.contracts.selectors import contract_get
from apps.positions.models import Position

from .models import Order, OrderCommand, Side, Trade

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_ID = 2**63 - 1
MAX_TIME_MS = 253402300799999  # 9999-12-31 23:59:59.999 UTC, the last moment a datetime holds

# Kline interval → bucket width in ms (None: calendar month). Weekly klines open on
# Monday 00:00 UTC, the others on multiples of their width since the epoch.
KLINE_INTERVALS_MS: dict[str, int | None] = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000, "12h": 43_200_000,
    "1d": 86_400_000, "3d": 259_200_000, "1w": 604_800_000, "1M": None,
}
_MONDAY_ORIGIN_MS = 4 * 86_400_000  # 1970-01-05


def ms(moment: datetime) -> int:
    """Exact epoch milliseconds (no float rounding)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_ms(value: int) -> datetime:
    return EPOCH + timedelta(milliseconds=value)


def _tables() -> dict[str, str]:
    return {
        "trade": Trade._meta.db_table,
        "order": Order._meta.db_table,
        "command": OrderCommand._meta.db_table,
        "contract": Contract._meta.db_table,
    }


def _fetch(sql: str, params) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql.format(**_tables()), params)
        return cursor.fetchall()


# --- book -------------------------------------------------------------------------------

# The price levels of one side, best first: resting orders' open quantity per price.
_LEVELS_SQL = """
    SELECT price, sum(quantity - executed_qty) AS qty FROM {{order}}
    WHERE contract_id = {contract} AND side = '{side}' AND status IN ('NEW', 'PARTIALLY_FILLED')
      AND priority IS NOT NULL
    GROUP BY price ORDER BY price {direction} LIMIT {limit}
"""
_LAST_DONE_SQL = """
    SELECT seq, processed_at FROM {{command}} WHERE contract_id = {contract} AND status = 'DONE'
    ORDER BY seq DESC LIMIT 1
"""


def _levels(contract: str, side: str, limit: str) -> str:
    direction = "DESC" if side == Side.BUY else "ASC"
    return _LEVELS_SQL.format(contract=contract, side=side, direction=direction, limit=limit)


@dataclass(frozen=True)
class Depth:
    contract: Contract
    last_update_id: int
    transaction_time: datetime | None
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]


def book_depth(*, symbol: str, limit: int) -> Depth:
    contract = contract_get(symbol=symbol)
    side_sql = {side: _levels("%(contract)s", side, "%(limit)s") for side in (Side.BUY, Side.SELL)}
    sql = f"""
        SELECT last.seq, last.processed_at,
               ARRAY(SELECT ARRAY[price, qty] FROM ({side_sql[Side.BUY]}) b ORDER BY price DESC),
               ARRAY(SELECT ARRAY[price, qty] FROM ({side_sql[Side.SELL]}) a ORDER BY price ASC)
        FROM (SELECT 1) one LEFT JOIN LATERAL ({_LAST_DONE_SQL.format(contract="%(contract)s")}) last ON true
    """
    seq, processed_at, bids, asks = _fetch(sql, {"contract": contract.pk, "limit": limit})[0]
    return Depth(
        contract=contract,
        last_update_id=seq or 0,
        transaction_time=processed_at,
        bids=[(p, q) for p, q in bids],
        asks=[(p, q) for p, q in asks],
    )


@dataclass(frozen=True)
class BookTicker:
    contract: Contract
    bid: tuple[Decimal, Decimal] | None
    ask: tuple[Decimal, Decimal] | None
    last_update_id: int
    transaction_time: datetime | None


def book_tickers(*, symbol: str | None = None) -> list[BookTicker]:
    """Best bid and ask of one contract (symbol given) or of every contract."""
    contracts = _contracts(symbol)
    sql = f"""
        SELECT c.id, b.price, b.qty, a.price, a.qty, last.seq, last.processed_at
        FROM {{contract}} c
        LEFT JOIN LATERAL ({_levels("c.id", Side.BUY, "1")}) b ON true
        LEFT JOIN LATERAL ({_levels("c.id", Side.SELL, "1")}) a ON true
        LEFT JOIN LATERAL ({_LAST_DONE_SQL.format(contract="c.id")}) last ON true
        WHERE c.id = ANY(%s)
    """
    rows = {row[0]: row for row in _fetch(sql, [[c.pk for c in contracts]])}
    result = []
    for c in contracts:
        _, bid_p, bid_q, ask_p, ask_q, seq, processed_at = rows[c.pk]
        result.append(BookTicker(
            contract=c,
            bid=(bid_p, bid_q) if bid_p is not None else None,
            ask=(ask_p, ask_q) if ask_p is not None else None,
            last_update_id=seq or 0,
            transaction_time=processed_at,
        ))
    return result


def _contracts(symbol: str | None) -> list[Contract]:
    if symbol is not None:
        return [contract_get(symbol=symbol)]
    return list(Contract.objects.select_related("base_asset", "quote_asset", "settle_asset").order_by("symbol"))


# --- trades ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PublicTrade:
    id: int
    price: Decimal
    quantity: Decimal
    time: datetime
    is_buyer_maker: bool


@dataclass(frozen=True)
class TradeList:
    contract: Contract
    trades: list[PublicTrade]


def trades_list(*, symbol: str, limit: int, from_id: int | None = None) -> TradeList:
    """The `limit` most recent trades, or (from_id given) `limit` trades from that id; oldest first."""
    contract = contract_get(symbol=symbol)
    rows = Trade.objects.filter(contract=contract)
    if from_id is None:
        rows = rows.order_by("-id")
    else:
        rows = rows.filter(id__gte=from_id).order_by("id")
    values = list(rows.values_list("id", "price", "quantity", "created_at", "taker_side")[:limit])
    values.sort(key=lambda row: row[0])
    return TradeList(contract=contract, trades=[
        PublicTrade(id=i, price=p, quantity=q, time=t, is_buyer_maker=side == Side.SELL) for i, p, q, t, side in values
    ])


@dataclass(frozen=True)
class AggTrade:
    id: int
    price: Decimal
    quantity: Decimal
    first_id: int
    last_id: int
    time: datetime
    is_buyer_maker: bool


@dataclass(frozen=True)
class AggTradeList:
    contract: Contract
    trades: list[AggTrade]


def agg_trades_list(
    *, symbol: str, limit: int, from_id: int | None = None, start: datetime | None = None, end: datetime | None = None
) -> AggTradeList:
    """Aggregate trades, oldest first.

    From `from_id` and/or `start` (the later of the two): the first `limit` aggregates
    whose first fill is there or later (a run that began before is not cut in half: it is
    left out, as its id is smaller). Otherwise the last `limit` aggregates whose first
    fill is at or before `end` (default: now), each complete. `end` always applies to
    an aggregate's time, the time of its first fill.

    One statement in two steps: find the first fills ("starts") of the wanted runs,
    stopping after `limit` of them (a window run condition on count(*)), then aggregate
    the fills between the first and the next unwanted start by (command, price).
    """
    contract = contract_get(symbol=symbol)
    # Trade times carry microseconds: "at or before end (ms)" is "before end + 1 ms".
    end_excl = end + timedelta(milliseconds=1) if end is not None and end < from_ms(MAX_TIME_MS) else None
    params = {"contract": contract.pk, "limit": limit, "from_id": from_id, "start": start, "end_excl": end_excl,
              "max_id": MAX_ID}
    key = "ROW(command_seq, price)"
    if from_id is not None or start is not None:
        lo_parts = []
        if from_id is not None:
            lo_parts.append("%(from_id)s::bigint")
        if start is not None:
            lo_parts.append("""coalesce((SELECT id FROM {trade} WHERE contract_id = %(contract)s
                AND created_at >= %(start)s ORDER BY created_at, id LIMIT 1), %(max_id)s)""")
        having = "HAVING min(created_at) < %(end_excl)s" if end_excl is not None else ""
        # The fill just before `lo` decides whether the first fill scanned starts a run.
        sql = f"""
            WITH lo AS MATERIALIZED (SELECT greatest({", ".join(lo_parts)}) AS id),
            prev AS MATERIALIZED (SELECT {key} AS k FROM {{trade}}
                WHERE contract_id = %(contract)s AND id < (SELECT id FROM lo) ORDER BY id DESC LIMIT 1),
            starts AS MATERIALIZED (
                SELECT id FROM (
                    SELECT id, count(*) OVER (ORDER BY id) AS n FROM (
                        SELECT id, {key} IS DISTINCT FROM coalesce(lag({key}) OVER (ORDER BY id), (SELECT k FROM prev))
                               AS starts
                        FROM {{trade}} WHERE contract_id = %(contract)s AND id >= (SELECT id FROM lo)
                    ) marked WHERE starts
                ) numbered WHERE n <= %(limit)s + 1
            )
            SELECT min(id), min(price), sum(quantity), min(id), max(id), min(created_at), bool_and(taker_side = 'SELL')
            FROM {{trade}}
            WHERE contract_id = %(contract)s AND id >= (SELECT min(id) FROM starts)
              AND id < coalesce((SELECT id FROM starts ORDER BY id OFFSET %(limit)s LIMIT 1), %(max_id)s)
            GROUP BY command_seq, price {having} ORDER BY min(id)
        """
    else:
        stop = "%(max_id)s::bigint"
        if end_excl is not None:
            # The first fill after the run that holds the last fill at or before `end`.
            stop = """(SELECT CASE WHEN b.id IS NULL THEN 0 ELSE coalesce(
                        (SELECT t.id FROM {trade} t WHERE t.contract_id = %(contract)s AND t.id > b.id
                           AND ROW(t.command_seq, t.price) IS DISTINCT FROM ROW(b.command_seq, b.price)
                         ORDER BY t.id LIMIT 1), %(max_id)s) END
                      FROM (SELECT 1) one LEFT JOIN LATERAL (
                        SELECT id, command_seq, price FROM {trade} WHERE contract_id = %(contract)s
                          AND created_at < %(end_excl)s ORDER BY created_at DESC, id DESC LIMIT 1) b ON true)"""
        # Newest first: a fill starts its run when the next older fill has another key.
        sql = f"""
            WITH stop AS MATERIALIZED (SELECT {stop} AS id),
            starts AS MATERIALIZED (
                SELECT id FROM (
                    SELECT id, count(*) OVER (ORDER BY id DESC) AS n FROM (
                        SELECT id, {key} IS DISTINCT FROM lead({key}) OVER (ORDER BY id DESC) AS starts
                        FROM {{trade}} WHERE contract_id = %(contract)s AND id < (SELECT id FROM stop)
                    ) marked WHERE starts
                ) numbered WHERE n <= %(limit)s
            )
            SELECT min(id), min(price), sum(quantity), min(id), max(id), min(created_at), bool_and(taker_side = 'SELL')
            FROM {{trade}}
            WHERE contract_id = %(contract)s AND id >= (SELECT min(id) FROM starts) AND id < (SELECT id FROM stop)
            GROUP BY command_seq, price ORDER BY min(id)
        """
    rows = _fetch(sql, params)
    return AggTradeList(contract=contract, trades=[AggTrade(*row) for row in rows])


# --- klines ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kline:
    open_time: int  # ms
    close_time: int  # ms, last millisecond of the interval
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    count: int
    taker_buy_volume: Decimal
    taker_buy_quote_volume: Decimal


@dataclass(frozen=True)
class KlineList:
    contract: Contract
    klines: list[Kline]


def kline_floor(interval: str, at_ms: int) -> int:
    """Open time (ms) of the interval that holds `at_ms`."""
    width = KLINE_INTERVALS_MS[interval]
    if width is None:
        moment = from_ms(at_ms)
        return ms(datetime(moment.year, moment.month, 1, tzinfo=timezone.utc))
    origin = _MONDAY_ORIGIN_MS if interval == "1w" else 0
    return origin + (at_ms - origin) // width * width


def kline_next(interval: str, open_ms: int) -> int:
    """Open time of the interval after the one opening at `open_ms` (past year 9999: MAX_TIME_MS + 1)."""
    width = KLINE_INTERVALS_MS[interval]
    if width is None:
        moment = from_ms(open_ms)
        if moment.year == 9999 and moment.month == 12:
            return MAX_TIME_MS + 1
        year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        return ms(datetime(year, month, 1, tzinfo=timezone.utc))
    return min(open_ms + width, MAX_TIME_MS + 1)


def klines_list(
    *, symbol: str, interval: str, limit: int, start_ms: int | None = None, end_ms: int | None = None
) -> KlineList:
    """Klines whose open time is in [start_ms, end_ms], oldest first, empty intervals omitted.

    With `start_ms`: the first `limit` from there; otherwise the last `limit` up to
    `end_ms` (default: now, the current interval included).
    """
    contract = contract_get(symbol=symbol)
    width = KLINE_INTERVALS_MS[interval]
    if width is None:
        bucket = "date_trunc('month', created_at, 'UTC')"
    else:
        origin = from_ms(_MONDAY_ORIGIN_MS if interval == "1w" else 0)
        bucket = f"date_bin(interval '{width} milliseconds', created_at, '{origin.isoformat()}'::timestamptz)"
    conditions, params = ["contract_id = %(contract)s"], {"contract": contract.pk, "limit": limit,
                                                          "size": contract.contract_size}
    if start_ms is not None:
        first_open = kline_floor(interval, start_ms)
        if first_open < start_ms:
            first_open = kline_next(interval, first_open)
        conditions.append("created_at >= %(lo)s")
        params["lo"] = from_ms(min(first_open, MAX_TIME_MS))
    if end_ms is not None:
        hi = kline_next(interval, kline_floor(interval, end_ms))
        if hi <= MAX_TIME_MS:
            conditions.append("created_at < %(hi)s")
            params["hi"] = from_ms(hi)
    where = " AND ".join(conditions)
    # Step 1: the open times of the wanted klines, stopping after `limit` of them (a run
    # condition on count(*) over the first fill of each interval in scan order); step 2:
    # aggregate the fills of exactly those intervals.
    if start_ms is not None:
        order, keep, upper = "created_at, id", "%(limit)s + 1", """
            AND created_at < coalesce((SELECT bucket FROM opens ORDER BY bucket OFFSET %(limit)s LIMIT 1),
                                      'infinity'::timestamptz)"""
    else:
        order, keep, upper = "created_at DESC, id DESC", "%(limit)s", ""
    sql = f"""
        WITH opens AS MATERIALIZED (
            SELECT bucket FROM (
                SELECT bucket, count(*) OVER (ORDER BY {order}) AS n FROM (
                    SELECT created_at, id, {bucket} AS bucket,
                           {bucket} IS DISTINCT FROM lag({bucket}) OVER (ORDER BY {order}) AS first_of_bucket
                    FROM {{trade}} WHERE {where}
                ) marked WHERE first_of_bucket
            ) numbered WHERE n <= {keep}
        )
        SELECT {bucket} AS open_time, (array_agg(price ORDER BY id))[1], max(price), min(price),
               (array_agg(price ORDER BY id DESC))[1], sum(quantity), sum(price * quantity) * %(size)s, count(*),
               coalesce(sum(quantity) FILTER (WHERE taker_side = 'BUY'), 0),
               coalesce(sum(price * quantity) FILTER (WHERE taker_side = 'BUY'), 0) * %(size)s
        FROM {{trade}}
        WHERE {where} AND created_at >= (SELECT min(bucket) FROM opens) {upper}
        GROUP BY open_time ORDER BY open_time
    """
    klines = []
    for bucket_start, o, h, low, c, volume, quote, count, buy_volume, buy_quote in _fetch(sql, params):
        open_ms = ms(bucket_start)
        klines.append(Kline(open_time=open_ms, close_time=kline_next(interval, open_ms) - 1, open=o, high=h, low=low,
                            close=c, volume=volume, quote_volume=quote, count=count, taker_buy_volume=buy_volume,
                            taker_buy_quote_volume=buy_quote))
    return KlineList(contract=contract, klines=klines)


# --- tickers -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Ticker24h:
    contract: Contract
    open_time: datetime
    close_time: datetime
    count: int
    first_id: int | None
    last_id: int | None
    open: Decimal | None
    high: Decimal | None
    low: Decimal | None
    volume: Decimal
    quote_volume: Decimal
    last_price: Decimal | None  # the last trade ever, even before the window
    last_qty: Decimal | None


def tickers_24h(*, symbol: str | None = None, now: datetime) -> list[Ticker24h]:
    """Rolling 24 h statistics ending at `now`, for one contract or all of them."""
    contracts = _contracts(symbol)
    since = now - timedelta(hours=24)
    sql = """
        SELECT c.id, s.n, s.first_id, s.last_id, (SELECT price FROM {trade} WHERE id = s.first_id),
               s.high, s.low, s.volume, s.quote_volume * c.contract_size, last.price, last.quantity
        FROM {contract} c
        CROSS JOIN LATERAL (
            SELECT count(*) AS n, min(id) AS first_id, max(id) AS last_id, max(price) AS high, min(price) AS low,
                   coalesce(sum(quantity), 0) AS volume, coalesce(sum(price * quantity), 0) AS quote_volume
            FROM {trade} t WHERE t.contract_id = c.id AND t.created_at >= %(since)s AND t.created_at <= %(now)s
        ) s
        LEFT JOIN LATERAL (
            SELECT price, quantity FROM {trade} t WHERE t.contract_id = c.id AND t.created_at <= %(now)s
            ORDER BY id DESC LIMIT 1
        ) last ON true
        WHERE c.id = ANY(%(ids)s)
    """
    rows = {row[0]: row[1:] for row in _fetch(sql, {"since": since, "now": now, "ids": [c.pk for c in contracts]})}
    result = []
    for c in contracts:
        n, first_id, last_id, open_, high, low, volume, quote_volume, last_price, last_qty = rows[c.pk]
        result.append(Ticker24h(contract=c, open_time=since, close_time=now, count=n, first_id=first_id,
                                last_id=last_id, open=open_, high=high, low=low, volume=volume,
                                quote_volume=quote_volume, last_price=last_price, last_qty=last_qty))
    return result


@dataclass(frozen=True)
class LastPrice:
    contract: Contract
    price: Decimal | None
    time: datetime | None


def last_prices(*, symbol: str | None = None) -> list[LastPrice]:
    """The last trade price of one contract or of every contract (None: never traded)."""
    contracts = _contracts(symbol)
    sql = """
        SELECT c.id, last.price, last.created_at FROM {contract} c
        LEFT JOIN LATERAL (SELECT price, created_at FROM {trade} t WHERE t.contract_id = c.id
                           ORDER BY id DESC LIMIT 1) last ON true
        WHERE c.id = ANY(%s)
    """
    rows = {row[0]: row[1:] for row in _fetch(sql, [[c.pk for c in contracts]])}
    return [LastPrice(contract=c, price=rows[c.pk][0], time=rows[c.pk][1]) for c in contracts]


@dataclass(frozen=True)
class OpenInterest:
    contract: Contract
    open_interest: Decimal


def open_interest_get(*, symbol: str) -> OpenInterest:
    """Open interest: the summed size of the long positions (equal to the short side's)."""
    contract = contract_get(symbol=symbol)
    total = _fetch(
        f"SELECT coalesce(sum(size), 0) FROM {Position._meta.db_table} "
        "WHERE contract_id = %s AND size <> 0 AND size > 0",
        [contract.pk],
    )[0][0]
    return OpenInterest(contract=contract, open_interest=total)

