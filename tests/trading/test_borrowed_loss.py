"""A loss beyond the free wallet is the user's own while they hold order margin.

Order margin is the user's money set aside for open orders. A loss the free wallet cannot pay
is borrowed against it (the user's RECEIVABLE account), repaid first from whatever margin comes
back, and only what the wallet and the holds together cannot pay falls to the insurance fund.
Before, the fund paid it and the user then cancelled the orders and kept the margin.
"""
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.ledger.models import AccountKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import account_get_or_create, system_account
from apps.marketdata.services import price_publish
from apps.ops.invariants import run_all_invariants
from apps.positions.models import Position
from apps.positions.selectors import account_overview
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.services import order_cancel, order_place

from .test_matching import held_of, insurance_fund, wallet_of

D = Decimal


@pytest.fixture(autouse=True)
def leveraged(settings):
    settings.RISK_PRETRADE_ENABLED = False  # an account this leveraged scores CRITICAL; not what this is about


def fund():
    return balance_amount(account=system_account(AccountKind.INSURANCE_FUND), asset_code="USDT")


def owed_by(user):
    return -balance_amount(account=account_get_or_create(kind=AccountKind.RECEIVABLE, user=user), asset_code="USDT")


def long_with_orders(funded, btcusdt, quantity=D("1.5"), **resting):
    """bob (3,000 USDT) buys 1 BTC at 50,000 from alice (taker fee 20), then rests an order that
    holds most of what is left; returns (alice, bob, engine, the resting order)."""
    alice, bob = funded("alice"), funded("bob", D("3000"))
    engine = SymbolEngine(btcusdt)
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("1"), price=D("50000"))
    batch_process(engine)
    assert wallet_of(bob) == D("2980")
    order = order_place(user=bob, contract=btcusdt, side="BUY", quantity=quantity, **resting)
    return alice, bob, engine, order


def close_at_48000(alice, bob, engine, btcusdt):
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("48000"))
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("1"), price=D("48000"), reduce_only=True)
    batch_process(engine)
    assert Position.objects.get(user=bob, contract=btcusdt).size == 0


def test_a_close_borrows_against_order_margin_and_the_cancel_repays_it(funded, usdt, btcusdt):
    insurance_fund(usdt, D("5000"))
    alice, bob, engine, order = long_with_orders(funded, btcusdt, price=D("30000"))
    batch_process(engine)
    # 1.5 × 30,000 × (1/20 + 0.0004) = 2,268 held; 712 free.
    assert (wallet_of(bob), held_of(bob)) == (D("712"), D("2268"))
    close_at_48000(alice, bob, engine, btcusdt)
    # Loss 2,000 and taker fee 19.2 against 712 free: 1,307.2 borrowed against the 2,268 held.
    assert (wallet_of(bob), held_of(bob), owed_by(bob)) == (0, D("2268"), D("1307.2"))
    assert fund() == D("5000")
    overview = account_overview(user=bob).asset("USDT")
    assert overview.wallet_balance == D("960.8") and overview.available == D("-1307.2")
    assert run_all_invariants() == []
    order_cancel(user=bob, contract=btcusdt, order_id=order.pk)
    batch_process(engine)
    # The margin returned repays the debt first: 3,000 − 20 − 2,000 − 19.2.
    assert (wallet_of(bob), held_of(bob), owed_by(bob)) == (D("960.8"), 0, 0)
    assert fund() == D("5000")
    assert run_all_invariants() == []


def test_the_fund_pays_only_what_the_wallet_and_the_holds_cannot(funded, usdt, btcusdt):
    insurance_fund(usdt, D("5000"))
    alice, bob, engine, order = long_with_orders(funded, btcusdt, price=D("30000"))
    batch_process(engine)
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("46000"))
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("1"), price=D("46000"), reduce_only=True)
    batch_process(engine)
    # 712 − 4,000 − 18.4 = −3,306.4: 2,268 borrowed against the holds, 1,038.4 from the fund.
    assert (wallet_of(bob), held_of(bob), owed_by(bob)) == (0, D("2268"), D("2268"))
    assert fund() == D("5000") - D("1038.4")
    order_cancel(user=bob, contract=btcusdt, order_id=order.pk)
    batch_process(engine)
    assert (wallet_of(bob), held_of(bob), owed_by(bob)) == (0, 0, 0)
    assert run_all_invariants() == []


def test_a_waiting_stop_cancelled_repays_the_debt(funded, usdt, btcusdt):
    """A conditional order waiting for its trigger is cancelled outside the matcher: its margin
    goes back through the same rule."""
    insurance_fund(usdt, D("5000"))
    price_publish(contract=btcusdt, index_price=D("50000"), mark_price=D("50000"), at=timezone.now())
    alice, bob, engine, stop = long_with_orders(funded, btcusdt, quantity=D("1"), order_type="STOP_MARKET",
                                                stop_price=D("52000"), working_type="MARK_PRICE")
    held = held_of(bob)
    assert held > 0 and stop.status == "NEW"
    price_publish(contract=btcusdt, index_price=D("48000"), mark_price=D("48000"), at=timezone.now())
    free = wallet_of(bob)
    close_at_48000(alice, bob, engine, btcusdt)
    owed = D("2019.2") - free
    assert 0 < owed < held and (wallet_of(bob), owed_by(bob)) == (0, owed)
    assert run_all_invariants() == []
    order_cancel(user=bob, contract=btcusdt, order_id=stop.pk)
    assert (wallet_of(bob), held_of(bob), owed_by(bob)) == (held - owed, 0, 0)
    assert fund() == D("5000")
    assert run_all_invariants() == []
