"""The user data stream (Binance USDⓈ-M): listen-key names, per-user groups, event payloads.

A client joins its user data stream with a listen key (`POST /fapi/v1/listenKey`),
either as the path of `/ws/<listenKey>` or as a stream name in a SUBSCRIBE request
on `/ws` or `/stream`; the websocket consumer tells a listen key apart from a market
stream name with `is_listen_key_name` before anything else, resolves it to its user
and subscribes the connection to the user's group (`user_group`, carried on the
Redis channel `ws:<db>:user.<id>` by `apps.marketdata.fanout`; `UserStream` renders it).
The stream relay publishes `{"user_id": ..., "data": [payload, ...]}` there, with
payloads built here:

- `order_trade_update`: one ORDER_TRADE_UPDATE per execution report the matcher
  publishes on `events:<symbol>` (no database read: the report carries everything);
- `account_update_for_user`: ACCOUNT_UPDATE (reason ORDER) from `account_overview`,
  one read per affected user, done by the relay, never the matcher;
- `margin_call`: MARGIN_CALL, from the event `apps.liquidation` publishes on
  `user:margin_call` (checked and reshaped field by field, never passed through);
- `listen_key_expired`: sent by the consumer when the key stops being valid.

Decimals go out as plain strings, times as epoch milliseconds, as Binance sends them.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.contrib.auth import get_user_model

USER_GROUP = "user.{user_id}"
# Listen keys are 64 letters and digits (services.LISTEN_KEY_LENGTH); a market stream
# name always has an "@" (or starts with "!"), so the two never collide.
_LISTEN_KEY = re.compile(r"^[A-Za-z0-9]{60,128}$")
# Execution types after which the user's balances may have moved: fills (TRADE, and
# CALCULATED: liquidation and auto-deleveraging), and margin held by the order released
# (cancel, expiry, rejection) or re-held (amendment).
FILL_EXEC_TYPES = frozenset({"TRADE", "CALCULATED"})
ACCOUNT_EXEC_TYPES = FILL_EXEC_TYPES | {"CANCELED", "EXPIRED", "REJECTED", "AMENDMENT"}
_STATUS_OUT = {"PENDING_NEW": "NEW"}


def is_listen_key_name(name: object) -> bool:
    return isinstance(name, str) and _LISTEN_KEY.match(name) is not None


def user_group(user_id: int) -> str:
    return USER_GROUP.format(user_id=int(user_id))


def user_events_message(*, user_id: int, payloads: list[dict]) -> tuple[str, str]:
    """(Redis channel, message) that carries `payloads` to the user's data streams in every web process."""
    from apps.marketdata.fanout import channel_of

    body = json.dumps({"user_id": int(user_id), "data": payloads}, separators=(",", ":"))
    return channel_of(user_group(user_id)), body


def user_events_publish(*, user_id: int, payloads: list[dict]) -> None:
    """Push events to a user's data streams from sync code (after commit); Redis errors are the caller's."""
    from exchange.redis import get_redis

    get_redis().publish(*user_events_message(user_id=user_id, payloads=payloads))


@dataclass(frozen=True, slots=True)
class UserStream:
    """A connection's subscription to one user's data stream, named by its listen key."""

    name: str  # the listen key
    user_id: int
    min_interval: float = 0.0  # never throttled

    @property
    def group(self) -> str:
        return user_group(self.user_id)

    def render(self, message: dict) -> list:
        return list(message["data"])


def _dec(value) -> str:
    """A decimal as plain digits; ValueError for anything that is not a finite number."""
    try:
        number = Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f"not a decimal: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite decimal: {value!r}")
    return format(number.normalize(), "f")


def _text(value, default: str = "") -> str:
    return str(value) if value is not None else default


def order_trade_update(*, symbol: str, report: dict, event_ms: int, transaction_ms: int) -> dict:
    """ORDER_TRADE_UPDATE for one matcher execution report (`apps.trading.matching._execution`).

    Raises KeyError / ValueError / TypeError on a malformed report. Fields the report
    does not carry take the values of this exchange's orders: one-way mode (`ps`
    BOTH), no price match (`pm` NONE), no self-trade-prevention ids (`si`/`ss` 0).
    `b`/`a` (the account's open bid/ask notional on the symbol) are not tracked per
    event and go out as "0". `cp`, `pP`, `V` and `gtd` are taken from the report when
    it has them (`close_position`, `price_protect`, `stp_mode`, `good_till_date`).
    """
    order_type = str(report["type"])
    status = str(report["status"])
    return {
        "e": "ORDER_TRADE_UPDATE",
        "E": int(event_ms),
        "T": int(transaction_ms),
        "o": {
            "s": symbol,
            "c": _text(report.get("client_order_id")),
            "S": str(report["side"]),
            "o": order_type,
            "f": _text(report.get("time_in_force"), "GTC"),
            "q": _dec(report["orig_qty"]),
            "p": _dec(report.get("price") or 0),
            "ap": _dec(report.get("avg_price") or 0),
            "sp": _dec(report.get("stop_price") or 0),
            "x": str(report["exec_type"]),
            "X": _STATUS_OUT.get(status, status),
            "i": int(report["order_id"]),
            "l": _dec(report.get("last_qty") or 0),
            "z": _dec(report.get("executed_qty") or 0),
            "L": _dec(report.get("last_price") or 0),
            "N": _text(report.get("commission_asset"), "USDT"),
            "n": _dec(report.get("commission") or 0),
            "T": int(transaction_ms),
            "t": int(report.get("trade_id") or 0),
            "b": "0",
            "a": "0",
            "m": bool(report.get("is_maker")),
            "R": bool(report.get("reduce_only")),
            "wt": _text(report.get("working_type"), "CONTRACT_PRICE") or "CONTRACT_PRICE",
            "ot": order_type,
            "ps": "BOTH",
            "cp": bool(report.get("close_position", False)),
            "rp": _dec(report.get("realized_pnl") or 0),
            "pP": bool(report.get("price_protect", False)),
            "si": 0,
            "ss": 0,
            "V": _text(report.get("stp_mode"), "EXPIRE_TAKER"),
            "pm": "NONE",
            "gtd": int(report.get("good_till_date") or 0),
        },
    }


def account_update(*, overview, assets: Iterable[str], symbols: Iterable[str], event_ms: int,
                   transaction_ms: int, reason: str = "ORDER") -> dict:
    """ACCOUNT_UPDATE from an `AccountOverview`: balances of `assets`, positions of `symbols`.

    `wb` is the wallet balance and `cw` the cross wallet balance exactly as the REST
    account endpoint reports them (`walletBalance`, `crossWalletBalance`); `bc` (the
    balance change other than PnL and commission) is "0" for reason ORDER. A position
    row with size 0 is still listed (`pa` "0"), as Binance does after a close.
    """
    symbols = set(symbols)
    balances = []
    for code in sorted(set(assets)):
        view = overview.asset(code)
        wallet = view.wallet_balance if view is not None else Decimal(0)
        cross = view.cross_wallet if view is not None else Decimal(0)
        balances.append({"a": code, "wb": _dec(wallet), "cw": _dec(cross), "bc": "0"})
    positions = []
    for view in overview.positions:
        if view.contract.symbol not in symbols:
            continue
        position = view.position
        isolated = view.is_isolated
        positions.append({
            "s": view.contract.symbol,
            "pa": _dec(position.size),
            "ep": _dec(position.entry_price),
            "bep": _dec(position.entry_price),
            "cr": _dec(position.realized_pnl),
            "up": _dec(view.risk.unrealized_pnl if view.risk is not None else 0),
            "mt": "isolated" if isolated else "cross",
            "iw": _dec(view.isolated_margin if isolated else 0),
            "ps": "BOTH",
        })
    return {
        "e": "ACCOUNT_UPDATE",
        "E": int(event_ms),
        "T": int(transaction_ms),
        "a": {"m": reason, "B": balances, "P": positions},
    }


def account_update_for_user(*, user_id: int, assets: Iterable[str], symbols: Iterable[str], event_ms: int,
                            transaction_ms: int) -> dict:
    """ACCOUNT_UPDATE for one user, read from the database (`account_overview`); sync."""
    from apps.positions.selectors import account_overview

    user = get_user_model()(pk=int(user_id))  # the selector filters by the key only: no user row read
    overview = account_overview(user=user)
    return account_update(overview=overview, assets=assets, symbols=symbols, event_ms=event_ms,
                          transaction_ms=transaction_ms)


_MARGIN_TYPES = frozenset({"CROSSED", "ISOLATED"})


def margin_call(event: dict) -> dict:
    """MARGIN_CALL (Binance USDⓈ-M) from `apps.liquidation.services.margin_call_payload`'s event.

    `cw` (cross wallet balance) only for a cross-margin call, as Binance sends it; per
    position `s` symbol, `ps` position side, `pa` amount, `mt` CROSSED/ISOLATED, `iw`
    isolated wallet, `mp` mark price, `up` unrealized PnL, `mm` maintenance margin.
    Raises KeyError / ValueError / TypeError on anything else.
    """
    if event["e"] != "MARGIN_CALL":
        raise ValueError(f"not a MARGIN_CALL event: {event['e']!r}")
    positions = []
    for item in event["p"]:
        margin_type = str(item["mt"])
        if margin_type not in _MARGIN_TYPES:
            raise ValueError(f"unknown margin type {margin_type!r}")
        positions.append({
            "s": str(item["s"]), "ps": str(item.get("ps") or "BOTH"), "pa": _dec(item["pa"]), "mt": margin_type,
            "iw": _dec(item.get("iw") or 0), "mp": _dec(item["mp"]), "up": _dec(item["up"]), "mm": _dec(item["mm"]),
        })
    if not positions:
        raise ValueError("a MARGIN_CALL names at least one position")
    payload: dict = {"e": "MARGIN_CALL", "E": int(event["E"])}
    if "cw" in event:
        payload["cw"] = _dec(event["cw"])
    payload["p"] = positions
    return payload


def listen_key_expired(*, listen_key: str, event_ms: int) -> dict:
    """listenKeyExpired as the USDⓈ-M stream sends it today (event time as a string)."""
    return {"e": "listenKeyExpired", "E": str(int(event_ms)), "listenKey": listen_key}
