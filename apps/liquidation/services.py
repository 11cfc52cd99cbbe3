"""Margin calls and liquidations: the writes of this app.

Margin calls (`margin_calls_evaluate`): each scope at or below 150% gets a Binance
MARGIN_CALL event, recorded (`MarginCall`) and published after commit on the Redis
channel `user:margin_call` as `{"user_id": ..., "event": {"e": "MARGIN_CALL", ...}}`;
a scope is called again at the same level only after a repeat interval.

Liquidation of a scope (the cross account in an asset, or one isolated position) is a
state machine advanced one step per transaction, so a crash anywhere resumes where the
committed state says (`liquidations_advance` is run by the sweep and after every
matcher batch that held a liquidation order):

1. `liquidation_start`: under the user's balance lock (the one order entry takes)
   the scope is judged exactly; at or below 100% an ACTIVE `Liquidation` is created
   (the freeze: order entry now refuses -2023, and the partial unique index stops a
   second liquidation of the scope) and the account's open orders are cancelled
   through the journal.
2. `liquidation_advance`: while the last liquidation order is still open, wait for the
   matcher. Otherwise judge the scope again; above 100% (or nothing left) finish and
   unfreeze. Else take the first position in priority order (largest loss, then
   liquidity = 24 h traded notional, then volatility = last hour's mark range) and
   journal a reduce-only LIQUIDATION IOC order for the matcher: the smallest
   reduction into a lower margin tier that brings the ratio above 100%, else the
   whole position; its worst price is the bankruptcy price. If such an order filled
   nothing or part (the market gapped through the bankruptcy price), the rest goes at
   the market (mark ± the contract's market deviation), but no further beyond the
   bankruptcy price than the insurance fund can pay for (`_fund_limit`). When the fund
   cannot pay for even one tick, or the market order too left a remainder, the position
   is auto-deleveraged (`adl.py`): closed against the highest-ranked opposite positions
   at its bankruptcy price, in this transaction. Then the next step starts afresh.
3. The matcher books the fills; the booking hook (`apps.positions.booking`) charges
   the clearance fee (and, for isolated positions, the whole surplus above bankruptcy)
   to the insurance fund, covers deficits from the fund and bad debt, and calls
   `liquidation_outcomes_record` in the same transaction: one EXECUTION record per order.

What the fund and ADL leave (several liquidations drawing on the fund at once, rounding)
is recorded bad debt. Each liquidation order and ADL step has a step number unique in its
liquidation (and the ADL posting a ledger key), so a replay after a crash books it once.
"""
import json
import logging
import time
from datetime import timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from django.db import transaction
from django.db.models import Avg, F, Max, Min, Q, Sum
from django.utils import timezone

from apps.contracts.lifecycle import ACCEPTING_STATUSES, book_exclusive_lock
from apps.contracts.models import Contract
from apps.ledger.models import AccountKind, Asset
from apps.ledger.selectors import balance_amount
from apps.ledger.services import system_account, user_balances_lock
from apps.marketdata.models import PriceSample
from apps.positions.booking import LiquidationOutcome
from apps.positions.models import Position
from apps.positions.risk import position_risk
from apps.positions.selectors import PositionView, account_overview
from apps.positions.tiers import contract_tiers
from apps.trading import doorbell
from apps.trading.models import (
    OPEN_STATUSES,
    CommandKind,
    Order,
    OrderCommand,
    OrderStatus,
    OrderType,
    Side,
    StpMode,
    Trade,
    TimeInForce,
)
from apps.trading.rules import protection_price
from apps.trading.services import orders_cancel_all
from exchange.redis import channel, get_redis

from .adl import adl_prepare, adl_step
from .conf import liquidation_setting
from .models import (
    Liquidation,
    LiquidationRecord,
    LiquidationStatus,
    MarginCall,
    MarginLevel,
    RecordKind,
    Scope,
)
from .status import MarginStatus, bankruptcy_price, plain, statuses_from_overview, thresholds

logger = logging.getLogger(__name__)
ZERO = Decimal(0)
MARGIN_CALL_CHANNEL = channel("user:margin_call")
LEVEL_RANK = {MarginLevel.NORMAL: 0, MarginLevel.WARNING: 1, MarginLevel.DANGER: 2, MarginLevel.LIQUIDATION: 3}
RATIO_PLACES = Decimal("1e-18")


def _ratio_field(ratio: Decimal | None) -> Decimal:
    if ratio is None:
        return Decimal("999999")
    return max(Decimal("-999999"), min(Decimal("999999"), ratio)).quantize(RATIO_PLACES)


def _scope_status(user, *, asset_code: str, contract_id: int | None) -> MarginStatus | None:
    for status in statuses_from_overview(user.pk, account_overview(user=user)):
        if contract_id is None and status.scope == Scope.CROSS and status.asset == asset_code:
            return status
        if contract_id is not None and status.scope == Scope.ISOLATED and status.contract.pk == contract_id:
            return status
    return None


# Margin calls ------------------------------------------------------------------------------

def margin_call_payload(status: MarginStatus, *, at_ms: int) -> dict:
    """The Binance USDⓈ-M user data stream MARGIN_CALL event of one scope."""
    cross = status.scope == Scope.CROSS
    return {
        "e": "MARGIN_CALL",
        "E": at_ms,
        **({"cw": plain(status.backing)} if cross else {}),
        "p": [
            {
                "s": v.contract.symbol,
                "ps": "BOTH",  # one-way mode
                "pa": plain(v.position.size),
                "mt": "CROSSED" if cross else "ISOLATED",
                "iw": plain(v.isolated_margin),
                "mp": plain(v.mark if v.mark is not None else v.position.entry_price),
                "up": plain(v.risk.unrealized_pnl),
                "mm": plain(v.risk.maintenance_margin),
            }
            for v in status.positions
        ],
    }


def margin_calls_evaluate(*, user) -> list[MarginCall]:
    """Record and publish a MARGIN_CALL for each of the user's scopes at WARNING or worse.

    A scope already called at the same or a worse level within the repeat interval is skipped.
    """
    return _margin_calls_record(user, statuses_from_overview(user.pk, account_overview(user=user)))


def _margin_calls_record(user, statuses: list[MarginStatus]) -> list[MarginCall]:
    """`margin_calls_evaluate` on the user's statuses just read."""
    repeat = timedelta(seconds=float(liquidation_setting("LIQUIDATION_MARGIN_CALL_REPEAT_SECONDS")))
    now = timezone.now()
    calls: list[MarginCall] = []
    for status in statuses:
        level = status.level
        if level == MarginLevel.NORMAL:
            continue
        contract_id = status.contract.pk if status.contract is not None else None
        # The scope is (asset, contract): each settle asset's cross account is called on its own.
        asset_id = status.positions[0].contract.settle_asset_id
        last = (MarginCall.objects.filter(user=user, asset_id=asset_id, contract_id=contract_id, scope=status.scope)
                .order_by("-id").values_list("level", "created_at").first())
        if last is not None and LEVEL_RANK[last[0]] >= LEVEL_RANK[level] and now - last[1] < repeat:
            continue
        deposits = status.deposits
        calls.append(MarginCall(
            user=user, asset_id=asset_id, scope=status.scope, contract_id=contract_id, level=level,
            ratio=_ratio_field(status.ratio),
            equity=status.equity, maintenance=status.maintenance,
            deposit_required=deposits[MarginLevel.WARNING],
            payload=margin_call_payload(status, at_ms=int(now.timestamp() * 1000)),
        ))
    if calls:
        with transaction.atomic():
            MarginCall.objects.bulk_create(calls)
            messages = [json.dumps({"user_id": user.pk, "event": c.payload}) for c in calls]
            transaction.on_commit(lambda: _publish(messages))
    return calls


def _publish(messages: list[str]) -> None:
    try:
        pipe = get_redis().pipeline(transaction=False)
        for message in messages:
            pipe.publish(MARGIN_CALL_CHANNEL, message)
        pipe.execute()
    except Exception:  # recorded; the client also sees it in the account reads
        logger.warning("margin call publish failed", exc_info=True)


# Liquidation -------------------------------------------------------------------------------

def _record(liquidation: Liquidation, kind: str, **fields) -> LiquidationRecord:
    return LiquidationRecord.objects.create(liquidation=liquidation, kind=kind, **fields)


def liquidation_start(*, user, asset: Asset, contract: Contract | None = None) -> Liquidation | None:
    """Freeze and start liquidating the scope if it is at or below 100% now; None when it is not."""
    with transaction.atomic():
        user_balances_lock(user_id=user.pk, asset=asset)
        # One active liquidation per scope: the cross account of this asset, or the isolated position.
        if Liquidation.objects.filter(user=user, asset=asset, contract=contract,
                                      status=LiquidationStatus.ACTIVE).exists():
            return None
        status = _scope_status(user, asset_code=asset.code, contract_id=contract.pk if contract else None)
        if status is None or status.level != MarginLevel.LIQUIDATION:
            return None
        liquidation = Liquidation.objects.create(
            user=user, asset=asset, scope=Scope.ISOLATED if contract else Scope.CROSS, contract=contract,
            ratio=_ratio_field(status.ratio), equity=status.equity, maintenance=status.maintenance)
        conditions = [{"type": "INSUFFICIENT_MARGIN", "ratio": str(status.ratio), "threshold":
                       str(thresholds()[MarginLevel.LIQUIDATION])}]
        if status.equity <= 0:
            conditions.append({"type": "NEGATIVE_EQUITY", "equity": str(status.equity)})
        _record(liquidation, RecordKind.CONDITIONS, ratio=liquidation.ratio, details={
            "conditions": conditions, "equity": str(status.equity), "maintenance": str(status.maintenance),
            "backing": str(status.backing), "unrealized": str(status.unrealized),
            "positions": [_position_detail(v, status) for v in status.positions]})
        # Cancel open orders: every symbol for the cross account, the position's symbol when isolated.
        open_orders = Order.objects.filter(user=user, status__in=OPEN_STATUSES).exclude(
            order_type=OrderType.LIQUIDATION)
        if contract is not None:
            open_orders = open_orders.filter(contract=contract)
        else:
            open_orders = open_orders.filter(contract__settle_asset=asset)
        cancelled = {}
        for symbol_contract in Contract.objects.filter(pk__in=open_orders.values("contract_id")).order_by("pk"):
            cancelled[symbol_contract.symbol] = orders_cancel_all(user=user, contract=symbol_contract)
        _record(liquidation, RecordKind.FREEZE, details={"cancelled_orders": cancelled})
        symbols = [v.contract.symbol for v in status.positions]
        transaction.on_commit(lambda: _count_started(symbols))
    liquidation_advance(liquidation=liquidation)
    liquidation.refresh_from_db()
    return liquidation


def _count_started(symbols: list[str]) -> None:
    try:
        from apps.ops.metrics import LIQUIDATIONS

        for symbol in symbols:
            LIQUIDATIONS.labels(symbol=symbol).inc()
    except Exception:
        logger.debug("liquidation metric not counted", exc_info=True)


def _position_detail(view: PositionView, status: MarginStatus) -> dict:
    return {"symbol": view.contract.symbol, "size": str(view.position.size),
            "entry_price": str(view.position.entry_price), "mark": str(view.mark),
            "unrealized": str(view.risk.unrealized_pnl), "maintenance": str(view.risk.maintenance_margin),
            "liquidation_price": str(view.liquidation_price),
            "bankruptcy_price": str(bankruptcy_price(view, status))}


def _market_factors(contract_ids: list[int]) -> tuple[dict[int, Decimal], dict[int, Decimal]]:
    """Liquidity (24 h traded notional) and volatility (last hour's mark range / mean) per contract."""
    now = timezone.now()
    liquidity = dict(Trade.objects.filter(contract_id__in=contract_ids, created_at__gte=now - timedelta(hours=24))
                     .values("contract_id").annotate(n=Sum(F("price") * F("quantity")))
                     .values_list("contract_id", "n"))
    volatility = {}
    for row in (PriceSample.objects.filter(contract_id__in=contract_ids, at__gte=now - timedelta(hours=1))
                .values("contract_id").annotate(hi=Max("mark_price"), lo=Min("mark_price"), mean=Avg("mark_price"))):
        volatility[row["contract_id"]] = (row["hi"] - row["lo"]) / row["mean"] if row["mean"] else ZERO
    return liquidity, volatility


def liquidation_plan(status: MarginStatus) -> list[PositionView]:
    """The scope's open positions in liquidation order: largest loss, then liquidity, then volatility.

    Only positions whose contract matches: a halted or delivering contract's book refuses
    orders (its positions wait for the resume, or are closed by the delivery).
    """
    views = [v for v in status.positions if v.position.size and v.contract.status in ACCEPTING_STATUSES]
    liquidity, volatility = _market_factors([v.contract.pk for v in views])
    return sorted(views, key=lambda v: (v.risk.unrealized_pnl, -liquidity.get(v.contract.pk, ZERO),
                                        -volatility.get(v.contract.pk, ZERO), v.contract.pk))


def step_quantity(view: PositionView, status: MarginStatus) -> Decimal:
    """The smallest reduction of the position into a lower margin tier that takes the scope above 100%
    (judged at the mark, with the clearance fee the booking would charge), else the whole position."""
    contract, size = view.contract, abs(view.position.size)
    mark = view.mark if view.mark is not None else view.position.entry_price
    tiers = contract_tiers(contract)
    limit = thresholds()[MarginLevel.LIQUIDATION]
    current = view.risk.tier
    if current is None or mark <= 0:
        return size
    unit = contract.lot_size
    bankruptcy = bankruptcy_price(view, status)
    for lower in reversed([t for t in tiers if t.bracket < current.bracket]):
        # Largest remaining size whose notional is below the lower tier's cap.
        keep = (lower.notional_cap / (mark * contract.contract_size) / unit).to_integral_value(ROUND_FLOOR) * unit
        if keep * mark * contract.contract_size >= lower.notional_cap:
            keep -= unit
        if keep <= 0 or keep >= size:
            continue
        cut = size - keep
        rest = position_risk(size=keep, entry_price=view.position.entry_price, mark=mark,
                             leverage=view.position.leverage, contract_size=contract.contract_size, tiers=tiers)
        maintenance = status.maintenance - view.risk.maintenance_margin + rest.maintenance_margin
        if status.scope == Scope.ISOLATED:
            equity = status.equity * keep / size  # the cut part's margin and PnL go to the fund
        else:  # the clearance fee is at most the surplus of the cut over the bankruptcy price
            surplus = (mark - bankruptcy) * cut * contract.contract_size * (1 if view.position.size > 0 else -1)
            fee = cut * mark * contract.contract_size * contract.liquidation_fee_rate
            equity = status.equity - max(ZERO, min(fee, surplus))
        if maintenance > 0 and equity / maintenance > limit:
            return cut
    return size


def _on_grid(price: Decimal, contract: Contract, side: str) -> Decimal:
    """The bankruptcy price on the tick grid, never worse for the liquidated side, inside the price limits."""
    tick = contract.tick_size
    rounding = ROUND_CEILING if side == Side.SELL else ROUND_FLOOR
    price = (price / tick).to_integral_value(rounding=rounding) * tick
    return min(max(price, contract.min_price), contract.max_price)


def _fund_limit(view: PositionView, status: MarginStatus, quantity: Decimal) -> Decimal | None:
    """The worst price at which closing `quantity` beyond the bankruptcy price costs no more than the
    insurance fund holds now (on the grid, toward the bankruptcy price); None when not even one tick."""
    contract = view.contract
    side = Side.SELL if view.position.size > 0 else Side.BUY
    fund = balance_amount(account=system_account(AccountKind.INSURANCE_FUND), asset_code=contract.settle_asset.code)
    exact = bankruptcy_price(view, status)
    room = max(ZERO, fund) / (quantity * contract.contract_size)
    bankruptcy = _on_grid(exact, contract, side)
    # On the grid like the bankruptcy price: rounded toward it, so the fund is never asked for more.
    limit = _on_grid(exact - room if side == Side.SELL else exact + room, contract, side)
    if (side == Side.SELL and limit >= bankruptcy) or (side == Side.BUY and limit <= bankruptcy):
        return None
    return limit


def _journal_order(liquidation: Liquidation, view: PositionView, status: MarginStatus, quantity: Decimal,
                   market: bool) -> Order:
    contract, position = view.contract, view.position
    side = Side.SELL if position.size > 0 else Side.BUY
    bankruptcy = _on_grid(bankruptcy_price(view, status), contract, side)
    worst = bankruptcy
    if market:  # as far as the market allows and the fund can pay for (`_fund_limit`)
        mark = view.mark if view.mark is not None else position.entry_price
        worst = protection_price(side=side, mark=mark, deviation=contract.market_max_deviation,
                                 tick=contract.tick_size, min_price=contract.min_price, max_price=contract.max_price)
        limit = _fund_limit(view, status, quantity)
        limit = bankruptcy if limit is None else limit
        worst = max(worst, limit) if side == Side.SELL else min(worst, limit)
    liquidation.steps += 1
    Liquidation.objects.filter(pk=liquidation.pk).update(steps=liquidation.steps)
    order = Order.objects.create(
        user_id=liquidation.user_id, contract=contract, client_order_id=f"liq-{liquidation.pk}-{liquidation.steps}",
        side=side, order_type=OrderType.LIQUIDATION, time_in_force=TimeInForce.IOC, price=bankruptcy,
        protection_price=worst, quantity=quantity, reduce_only=True, leverage=position.leverage,
        stp_mode=StpMode.EXPIRE_MAKER, margin_held=ZERO, status=OrderStatus.PENDING_NEW)
    OrderCommand.objects.create(contract=contract, kind=CommandKind.NEW, order=order)
    transaction.on_commit(lambda: doorbell.ring(contract.pk))
    _record(liquidation, RecordKind.ORDER, step=liquidation.steps, symbol=contract.symbol, order=order,
            quantity=quantity, price=worst, bankruptcy_price=bankruptcy, ratio=_ratio_field(status.ratio),
            details={"stage": "market" if market else "bankruptcy", "side": side,
                     "position_size": str(position.size), "mark": str(view.mark), "equity": str(status.equity),
                     "maintenance": str(status.maintenance)})
    return order


# After a liquidation order that left a remainder: the next stage.
NEXT_STAGE = {"bankruptcy": "market", "market": "adl"}


def liquidation_advance(*, liquidation: Liquidation) -> str:
    """One step of an active liquidation; returns what happened
    (waiting, ordered, deleveraged, finished, stalled, busy)."""
    with transaction.atomic():
        # NO KEY UPDATE: the matcher's booking inserts records pointing at this row (a KEY SHARE lock).
        liquidation = (Liquidation.objects.select_for_update(no_key=True, skip_locked=True)
                       .filter(pk=liquidation.pk, status=LiquidationStatus.ACTIVE).select_related("user", "asset")
                       .first())
        if liquidation is None:
            return "busy"
        # The last step: a liquidation order, or an ADL step (after which it starts again).
        last = (liquidation.records.filter(kind__in=(RecordKind.ORDER, RecordKind.DELEVERAGE))
                .select_related("order__contract__settle_asset").order_by("-id").first())
        order = last.order if last is not None and last.kind == RecordKind.ORDER else None
        if order is not None and order.status in OPEN_STATUSES:
            return "waiting"
        stage = "bankruptcy"
        if order is not None and order.executed_qty < order.quantity:
            if not liquidation.records.filter(kind=RecordKind.NO_FILL, order=order).exists():
                _record(liquidation, RecordKind.NO_FILL, symbol=last.symbol, order=order,
                        quantity=order.quantity - order.executed_qty,
                        details={"stage": last.details.get("stage"), "executed": str(order.executed_qty)})
            stage = NEXT_STAGE.get(last.details.get("stage"), "bankruptcy")  # "stalled": from the start
            # Decided before any balance lock: an ADL step takes the balances of everybody it
            # touches in one sorted lock, so it must not hold the liquidated user's already.
            stage = _gap_stage(liquidation, order, stage)
            if stage == "adl":
                if _cancels_pending(liquidation, order.contract_id):
                    return "waiting"
                outcome = _deleverage(liquidation, last)
                if outcome is not None:
                    return outcome
                stage = "bankruptcy"
        user = liquidation.user
        user_balances_lock(user_id=user.pk, asset=liquidation.asset)
        status = _scope_status(user, asset_code=liquidation.asset.code, contract_id=liquidation.contract_id)
        limit = thresholds()[MarginLevel.LIQUIDATION]
        if status is None or status.ratio is None or status.ratio > limit:
            _finish(liquidation, status)
            return "finished"
        plan = liquidation_plan(status)
        # Only positions no book can trade now, or cancels still on their way: the next sweep looks again.
        if not plan or _cancels_pending(liquidation, plan[0].contract.pk):
            return "waiting"
        if last is None:
            _record(liquidation, RecordKind.PLAN, ratio=_ratio_field(status.ratio),
                    details={"order": [_position_detail(v, status) for v in plan]})
        view = plan[0]
        # The gapped position goes on at the market only while it is still the first one.
        market = stage == "market" and order.contract_id == view.contract.pk
        quantity = abs(view.position.size) if market else step_quantity(view, status)
        _journal_order(liquidation, view, status, quantity, market)
    return "ordered"


def _cancels_pending(liquidation: Liquidation, contract_id: int) -> bool:
    """Whether the scope still has open orders on contracts other than `contract_id`. Their
    cancels, journalled at the start, wait for those contracts' matchers, and until then their
    holds are not back in the wallet, though the cross scope's backing (its bankruptcy price)
    counts them: a liquidation order or ADL step booked first would leave a wallet deficit the
    insurance fund covers, and the returning holds would then go to the user. (On the order's
    own contract the journal processes the cancels first.) At most LIQUIDATION_CANCEL_WAIT_SECONDS
    after the start: a matcher that is down must not hold the liquidation up."""
    waited = timezone.now() - liquidation.started_at
    if waited.total_seconds() > liquidation_setting("LIQUIDATION_CANCEL_WAIT_SECONDS"):
        return False
    orders = (Order.objects.filter(user_id=liquidation.user_id, status__in=OPEN_STATUSES)
              .exclude(order_type=OrderType.LIQUIDATION).exclude(contract_id=contract_id))
    if liquidation.contract_id is not None:
        orders = orders.filter(contract_id=liquidation.contract_id)
    else:
        orders = orders.filter(contract__settle_asset_id=liquidation.asset_id)
    return orders.exists()


def _gapped_view(liquidation: Liquidation, contract_id: int) -> tuple[MarginStatus | None, PositionView | None]:
    """The scope's status and the position on `contract_id`, (None, None) when it is no longer liquidatable."""
    status = _scope_status(liquidation.user, asset_code=liquidation.asset.code, contract_id=liquidation.contract_id)
    if status is None or status.ratio is None or status.ratio > thresholds()[MarginLevel.LIQUIDATION]:
        return None, None
    view = next((v for v in status.positions if v.contract.pk == contract_id and v.position.size), None)
    return (status, view) if view is not None else (None, None)


def _gap_stage(liquidation: Liquidation, order: Order, stage: str) -> str:
    """"market" only while the insurance fund could pay for a gap of at least one tick on the whole
    remaining position, else "adl" (cheap reads: the exact limit is set under the locks, and an ADL
    step judges the scope again there)."""
    if stage != "market":
        return stage
    contract = order.contract
    size = Position.objects.filter(user_id=liquidation.user_id, contract=contract).values_list("size", flat=True) \
        .first()
    if not size:
        return "bankruptcy"
    fund = balance_amount(account=system_account(AccountKind.INSURANCE_FUND), asset_code=contract.settle_asset.code)
    return "market" if fund >= contract.tick_size * abs(size) * contract.contract_size else "adl"


def _deleverage(liquidation: Liquidation, last: LiquidationRecord) -> str | None:
    """An ADL step for the position of `last` (its order left a remainder the fund cannot pay to
    close at the market); None when, under the locks, there is nothing to deleverage any more, or
    when the contract does not match now (halted, delivering): its positions wait, as in the plan."""
    contract = last.order.contract
    # The book before any balance: a batch in flight has booked its fills when this goes on,
    # and none matches against the orders this step expires (`adl._reduce_only_trim`).
    contract.status = book_exclusive_lock(contract.pk)
    if contract.status not in ACCEPTING_STATUSES:
        return None
    counterparties = adl_prepare(contract=contract, user_id=liquidation.user_id)  # balances, then positions
    status, view = _gapped_view(liquidation, contract.pk)  # judged again on locked state
    if view is None:
        return None
    if not counterparties:
        _stalled(liquidation, last)
        return "stalled"
    side = Side.SELL if view.position.size > 0 else Side.BUY
    bankruptcy = _on_grid(bankruptcy_price(view, status), contract, side)
    fund = balance_amount(account=system_account(AccountKind.INSURANCE_FUND), asset_code=contract.settle_asset.code)
    booked = adl_step(liquidation=liquidation, contract=contract, position=view.position,
                      counterparties=counterparties, bankruptcy=bankruptcy, ratio=_ratio_field(status.ratio),
                      details={"mark": str(view.mark), "equity": str(status.equity),
                               "maintenance": str(status.maintenance), "insurance_fund": str(fund),
                               "after_order": last.order_id})
    if booked is None:
        _stalled(liquidation, last)
        return "stalled"
    return "deleveraged"


def _stalled(liquidation: Liquidation, last: LiquidationRecord) -> None:
    """Nothing could fill, not even against counterparties: stay frozen, alert ops, retry on the next sweep."""
    key = f"liquidation_stalled:{liquidation.pk}"
    transaction.on_commit(lambda: _alert(key, liquidation, last.symbol))
    # The next advance starts again at the bankruptcy price, then the market, then ADL.
    last.details = {**last.details, "stage": "stalled"}
    last.save(update_fields=["details"])


def _alert(key: str, liquidation: Liquidation, symbol: str) -> None:
    try:
        from apps.ops.alerts import alert_raise
        from apps.ops.models import AlertLevel

        alert_raise(key=key, level=AlertLevel.CRITICAL,
                    message=f"Liquidation #{liquidation.pk} of user {liquidation.user_id} cannot fill on {symbol}: "
                            "no liquidity even at the market price and no position to deleverage against.",
                    details={"liquidation_id": liquidation.pk, "symbol": symbol})
    except Exception:
        logger.exception("liquidation alert failed")


# Records whose money columns are the liquidation's insurance fund and bad-debt flows.
MONEY_KINDS = (RecordKind.EXECUTION, RecordKind.DELEVERAGE, RecordKind.ADL)


def _finish(liquidation: Liquidation, status: MarginStatus | None) -> None:
    now = timezone.now()
    Liquidation.objects.filter(pk=liquidation.pk).update(status=LiquidationStatus.DONE, finished_at=now)
    adl = Q(kind=RecordKind.ADL)  # the quantity deleveraged and the counterparties' PnL
    totals = liquidation.records.filter(kind__in=MONEY_KINDS).aggregate(
        fee=Sum("clearance_fee"), surplus=Sum("surplus_to_fund"), cover=Sum("fund_cover"), bad=Sum("bad_debt"),
        adl_quantity=Sum("quantity", filter=adl), adl_pnl=Sum("pnl", filter=adl))
    _record(liquidation, RecordKind.FINISHED,
            ratio=_ratio_field(status.ratio) if status is not None else None,
            details={"equity": str(status.equity) if status else "0",
                     "maintenance": str(status.maintenance) if status else "0",
                     "positions_left": [_position_detail(v, status) for v in status.positions] if status else [],
                     **{k: str(v or 0) for k, v in totals.items()}})


def liquidation_outcomes_record(*, contract: Contract, outcomes: list[LiquidationOutcome]) -> None:
    """Called by the matcher's booking, in the batch transaction: one EXECUTION record per liquidation order."""
    orders = {o.pk: o for o in Order.objects.filter(pk__in=[x.order_id for x in outcomes])}
    steps = {r.order_id: r.liquidation_id for r in LiquidationRecord.objects.filter(
        kind=RecordKind.ORDER, order_id__in=list(orders))}
    rows = []
    for outcome in outcomes:
        liquidation_id = steps.get(outcome.order_id)
        if liquidation_id is None:
            logger.error("liquidation order %s has no liquidation", outcome.order_id)
            continue
        order = orders[outcome.order_id]
        rows.append(LiquidationRecord(
            liquidation_id=liquidation_id, kind=RecordKind.EXECUTION, symbol=contract.symbol, order=order,
            quantity=outcome.quantity, price=outcome.notional / (outcome.quantity * contract.contract_size),
            bankruptcy_price=order.price, clearance_fee=outcome.clearance_fee,
            surplus_to_fund=outcome.surplus_to_fund, fund_cover=outcome.fund_cover, bad_debt=outcome.bad_debt,
            details={"notional": str(outcome.notional)}))
    LiquidationRecord.objects.bulk_create(rows)


def liquidations_advance() -> dict[str, int]:
    """Advance every active liquidation one step (the sweep, and after matcher batches)."""
    counts: dict[str, int] = {}
    for liquidation in Liquidation.objects.filter(status=LiquidationStatus.ACTIVE).order_by("pk"):
        try:
            outcome = liquidation_advance(liquidation=liquidation)
        except Exception:
            # Its step rolled back and is retried on the next sweep; in id order every sweep,
            # one that keeps failing must not hold up the liquidations after it.
            logger.exception("advancing liquidation %s failed", liquidation.pk)
            outcome = "failed"
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def liquidation_nominees_process(*, cross: list[tuple[int, int]], isolated: list[tuple[int, int]]) -> dict:
    """Judge the screen's nominees exactly: margin calls for all, liquidations for those at or below 100%."""
    from django.contrib.auth import get_user_model

    users = get_user_model().objects.in_bulk({u for u, _ in cross} | {u for u, _ in isolated})
    # Each user's statuses are read once, for the margin calls and to pick the scopes at or
    # below 100% now; only those are started (`liquidation_start` judges again under the lock).
    # Most nominees are only margin calls: they no longer pay a lock and a second read.
    statuses = {}
    for user in users.values():
        statuses[user.pk] = statuses_from_overview(user.pk, account_overview(user=user))
        _margin_calls_record(user, statuses[user.pk])

    def due(user_id: int, *, asset_id: int | None = None, contract_id: int | None = None) -> bool:
        for status in statuses[user_id]:
            if (status.scope == Scope.ISOLATED and status.contract.pk == contract_id) or (
                    contract_id is None and status.scope == Scope.CROSS
                    and status.positions[0].contract.settle_asset_id == asset_id):
                return status.level == MarginLevel.LIQUIDATION
        return False

    cross_due = [(u, a) for u, a in cross if due(u, asset_id=a)]
    isolated_due = [(u, c) for u, c in isolated if due(u, contract_id=c)]
    assets = Asset.objects.in_bulk({a for _, a in cross_due})
    contracts = Contract.objects.select_related("settle_asset").in_bulk({c for _, c in isolated_due})
    started = 0
    for user_id, asset_id in cross_due:
        started += liquidation_start(user=users[user_id], asset=assets[asset_id]) is not None
    for user_id, contract_id in isolated_due:
        contract = contracts[contract_id]
        started += liquidation_start(user=users[user_id], asset=contract.settle_asset, contract=contract) is not None
    return {"nominees": len(cross) + len(isolated), "started": started}


def liquidation_sweep() -> dict:
    """Screen every open position at the latest marks, process the nominees, advance active liquidations."""
    from .screen import ScreenBook

    started = time.perf_counter()
    book = ScreenBook.load()
    loaded = time.perf_counter()
    marks = book.marks()
    hits = book.screen(marks, ratio=float(thresholds()[MarginLevel.WARNING]))
    result = liquidation_nominees_process(cross=hits.cross, isolated=hits.isolated)
    result.update(advanced=liquidations_advance(), positions=book.positions,
                  load_ms=round((loaded - started) * 1000, 1), screen_ms=round(hits.seconds * 1000, 2))
    return result
