"""Auto-deleveraging: the ranking of counterparties and the execution of one ADL step.

When a liquidation order could not close a position at the bankruptcy price and the
insurance fund cannot pay for closing it at the market, the position is closed against
opposite-side positions instead, first those with the highest `selectors.adl_scores`
(profit % × margin ratio: the ranking users see as the ADL light), at the liquidated
position's bankruptcy price, without fees, the last counterparty partially. The
booking (`apps.positions.booking.adl_book`) moves both sides' realized PnL in one
balanced ADL posting keyed `liquidation:<id>:adl:<step>`; what the closing still leaves
(rounding, a counterparty's own loss) is covered by the fund, then recorded bad debt.

`adl_step` runs inside the liquidation's advance transaction (the liquidation row is
locked, no balance yet). It holds the contract's book (`book_exclusive_lock`: no matcher
batch in flight or starting), takes every balance it needs in one sorted lock, then the
positions (`adl_prepare`), and writes in that transaction: one DELEVERAGE record (the
step: the liquidated side's order row, quantity, bankruptcy price, fund and bad debt),
one ADL record per counterparty (quantity, price, PnL), REALIZED_PNL income lines, the
expiry of counterparties' reduce-only orders the smaller positions no longer cover
(`_reduce_only_trim`), and, after commit, a Binance-style ORDER_TRADE_UPDATE on each
user's data stream (exec type CALCULATED; the liquidated side: its LIQUIDATION order row,
FILLED; counterparties: type MARKET, client order id `adl_autoclose`, and as order id
their ADL record's id, since they get no order row: that client id repeats; EXPIRED for
the trimmed orders) and the ADL counter. A crash rolls the whole step back; the unique
step number and ledger key make a replay book it once.
"""
import json
import logging
import time
from decimal import Decimal

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.contracts.lifecycle import book_changed
from apps.ledger.models import Income, IncomeType
from apps.positions.booking import AdlBooking, adl_book, adl_lock
from apps.positions.models import Position
from apps.trading.models import OPEN_STATUSES, Order, OrderStatus, OrderType, Side, StpMode, TimeInForce
from apps.trading.rules import reduce_only_excess
from apps.trading.matching import expired_report
from exchange.redis import get_redis

from .models import Liquidation, LiquidationRecord, RecordKind
from .selectors import adl_scores
from .status import plain

logger = logging.getLogger(__name__)
ADL_CLIENT_ORDER_ID = "adl_autoclose"
# Counterparties locked beyond those whose sizes cover the quantity (read before the lock),
# in case some shrink in between; a shortfall is deleveraged in a later step anyway.
SPARE_COUNTERPARTIES = 2


def adl_ranking(*, contract, side: int) -> list[int]:
    """User ids holding `side` (+1 long, -1 short) positions of the contract, first to be
    deleveraged first: highest ADL score, then the older account (lower id)."""
    scores = adl_scores(contract=contract)
    ranked = sorted(((score, user_id) for user_id, (s, score) in scores.items() if s == side),
                    key=lambda x: (-x[0], x[1]))
    return [user_id for _, user_id in ranked]


def adl_counterparties(*, contract, user_id: int, size: Decimal) -> list[int]:
    """The ranked opposite-side users whose positions (read now, unlocked) cover |size|, plus spares."""
    ranked = [u for u in adl_ranking(contract=contract, side=-1 if size > 0 else 1) if u != user_id]
    sizes = dict(Position.objects.filter(contract=contract, user_id__in=ranked).values_list("user_id", "size"))
    chosen, covered, spare = [], Decimal(0), SPARE_COUNTERPARTIES
    for other in ranked:
        if covered >= abs(size):
            if spare == 0:
                break
            spare -= 1
        chosen.append(other)
        covered += abs(sizes.get(other, Decimal(0)))
    return chosen


def adl_prepare(*, contract, user_id: int) -> list[int]:
    """Rank and lock (balances, then positions) the liquidated user and the counterparties; [] if flat.
    The caller holds the contract's `book_exclusive_lock`, which comes before them."""
    size = Position.objects.filter(contract=contract, user_id=user_id).values_list("size", flat=True).first()
    if not size:
        return []
    counterparties = adl_counterparties(contract=contract, user_id=user_id, size=size)
    adl_lock(contract=contract, user_ids=[user_id, *counterparties])
    return counterparties


def adl_step(*, liquidation: Liquidation, contract, position: Position, counterparties: list[int],
             bankruptcy: Decimal, ratio: Decimal, details: dict) -> AdlBooking | None:
    """Deleverage the liquidated `position` (locked by `adl_prepare`) at `bankruptcy`; None if nothing filled."""
    liquidation.steps += 1
    step = liquidation.steps
    Liquidation.objects.filter(pk=liquidation.pk).update(steps=step)
    quantity = abs(position.size)
    side = Side.SELL if position.size > 0 else Side.BUY
    booking = adl_book(contract=contract, user_id=liquidation.user_id, quantity=quantity, price=bankruptcy,
                       counterparties=counterparties, idempotency_key=f"liquidation:{liquidation.pk}:adl:{step}",
                       reference={"symbol": contract.symbol, "liquidation_id": liquidation.pk, "step": step})
    if booking is None:  # cannot happen under the liquidation's row lock; refuse rather than book twice
        raise RuntimeError(f"ADL step {step} of liquidation {liquidation.pk} is already booked")
    if booking.quantity == 0:
        return None
    cs = contract.contract_size
    order = Order.objects.create(
        user_id=liquidation.user_id, contract=contract, client_order_id=f"liq-{liquidation.pk}-{step}", side=side,
        order_type=OrderType.LIQUIDATION, time_in_force=TimeInForce.IOC, price=bankruptcy, quantity=booking.quantity,
        executed_qty=booking.quantity, cum_quote=booking.quantity * bankruptcy * cs, reduce_only=True,
        leverage=position.leverage, stp_mode=StpMode.EXPIRE_MAKER, margin_held=Decimal(0),
        status=OrderStatus.FILLED)
    outcome = booking.outcome
    LiquidationRecord.objects.create(
        liquidation=liquidation, kind=RecordKind.DELEVERAGE, step=step, symbol=contract.symbol, order=order,
        quantity=booking.quantity, price=bankruptcy, bankruptcy_price=bankruptcy, ratio=ratio, pnl=booking.realized_pnl,
        surplus_to_fund=outcome.surplus_to_fund, fund_cover=outcome.fund_cover, bad_debt=outcome.bad_debt,
        details={**details, "position_size": str(position.size), "counterparties": len(booking.fills),
                 "unfilled": str(quantity - booking.quantity), "transaction_id": booking.ledger_transaction_id})
    adl_records = LiquidationRecord.objects.bulk_create([
        LiquidationRecord(liquidation=liquidation, kind=RecordKind.ADL, step=step, symbol=contract.symbol,
                          counterparty_id=fill.user_id, quantity=fill.quantity, price=bankruptcy,
                          bankruptcy_price=bankruptcy, pnl=fill.realized_pnl, fund_cover=fill.fund_cover,
                          bad_debt=fill.bad_debt, details={"transaction_id": booking.ledger_transaction_id})
        for fill in booking.fills
    ])
    _incomes(contract, liquidation.user_id, booking)
    expired = _reduce_only_trim(contract, [fill.user_id for fill in booking.fills])
    # The positions moved outside the matcher, whose book follows each owner's position (to cut
    # reduce-only orders at it): its next batch rebuilds the book, positions included, from the
    # database (the caller holds `book_exclusive_lock`).
    book_changed(contract.pk)
    reports = [_report(order_id=order.pk, user_id=liquidation.user_id, client_order_id=order.client_order_id,
                       side=side, order_type=OrderType.LIQUIDATION, quantity=booking.quantity, price=bankruptcy,
                       pnl=booking.realized_pnl, contract=contract)]
    reports += [_report(order_id=record.pk, user_id=fill.user_id, client_order_id=ADL_CLIENT_ORDER_ID,
                        side=Side.BUY if side == Side.SELL else Side.SELL, order_type=OrderType.MARKET,
                        quantity=fill.quantity, price=bankruptcy, pnl=fill.realized_pnl, contract=contract)
                for record, fill in zip(adl_records, booking.fills)]
    transaction.on_commit(lambda: _announce(contract.symbol, reports + expired, executions=len(booking.fills)))
    return booking


def _reduce_only_trim(contract, user_ids: list[int]) -> list[dict]:
    """ADL shrank these positions outside the matcher, which assumes that no open reduce-only
    order exceeds what is left to reduce (else a fill could open a position through it): per
    user and side the oldest are kept up to that size (the matcher's rule,
    `apps.trading.rules.reduce_only_excess`), the rest EXPIRED here, in the step's transaction.
    A journalled cancel would come after the commands accepted before this step, which could
    still fill them; instead the matcher's next batch rebuilds its book first (`book_changed`,
    which `adl_step` calls after every step) and drops a pending NEW whose order is no longer
    open. Reducing orders hold no margin (`order_hold`): nothing to release. Returns the
    EXPIRED execution reports."""
    sizes = dict(Position.objects.filter(contract=contract, user_id__in=user_ids).values_list("user_id", "size"))
    orders = (Order.objects.filter(contract=contract, user_id__in=user_ids, status__in=OPEN_STATUSES)
              .filter(Q(reduce_only=True) | Q(close_position=True))
              .order_by(F("priority").asc(nulls_last=True), "pk"))
    # A conditional order not in the book yet (`is_waiting`) is left to its trigger.
    excess = reduce_only_excess(((o.user_id, o.side, o.quantity - o.executed_qty, o) for o in orders
                                 if not o.is_waiting), sizes)
    if not excess:
        return []
    Order.objects.filter(pk__in=[o.pk for o in excess]).update(status=OrderStatus.EXPIRED, updated_at=timezone.now())
    return [expired_report(contract, order) for order in excess]


def _incomes(contract, user_id: int, booking: AdlBooking) -> None:
    now = timezone.now()
    lines = [(user_id, booking.realized_pnl), *((f.user_id, f.realized_pnl) for f in booking.fills)]
    Income.objects.bulk_create([
        Income(user_id=u, symbol=contract.symbol, income_type=IncomeType.REALIZED_PNL, amount=pnl,
               asset_id=contract.settle_asset_id, info="ADL", transaction_id=booking.ledger_transaction_id,
               created_at=now)
        for u, pnl in lines if pnl
    ])


def _report(*, order_id: int, user_id: int, client_order_id: str, side: str, order_type: str, quantity: Decimal,
            price: Decimal, pnl: Decimal, contract) -> dict:
    """An execution report in the matcher's shape (`apps.trading.matching._execution`), exec type CALCULATED."""
    qty, px = plain(quantity), plain(price)
    return {
        "order_id": order_id, "user_id": user_id, "client_order_id": client_order_id, "side": side,
        "type": order_type, "time_in_force": TimeInForce.IOC, "orig_qty": qty, "price": px, "stop_price": "0",
        "avg_price": px, "status": OrderStatus.FILLED, "exec_type": "CALCULATED", "executed_qty": qty,
        "reduce_only": True, "working_type": "CONTRACT_PRICE", "close_position": False, "price_protect": False,
        "stp_mode": StpMode.NONE, "last_qty": qty, "last_price": px, "commission": "0", "realized_pnl": plain(pnl),
        "trade_id": 0, "is_maker": False, "commission_asset": contract.settle_asset.code,
    }


def _announce(symbol: str, reports: list[dict], *, executions: int) -> None:
    """After commit: the ADL counter (`executions`: one per counterparty), and the reports on the
    matcher's event channel (the relay turns each into an ORDER_TRADE_UPDATE on its user's
    stream). A lost publish loses no data."""
    from apps.trading.matching import EVENTS_CHANNEL

    try:
        from apps.ops.metrics import ADL_EVENTS

        ADL_EVENTS.labels(symbol=symbol).inc(executions)
    except Exception:
        logger.debug("ADL metric not counted", exc_info=True)
    try:
        payload = {"symbol": symbol, "time": int(time.time() * 1000), "orders": reports}
        get_redis().publish(EVENTS_CHANNEL.format(symbol=symbol), json.dumps(payload))
    except Exception:
        logger.warning("ADL event publish for %s failed", symbol, exc_info=True)
