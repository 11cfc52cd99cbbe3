"""Funding and delivery: a payer short of free wallet pays with the order margin it holds
before the insurance fund pays anything (the rule of `apps.positions.booking.deficits_cover`).

The debt is the user's RECEIVABLE, repaid first when the order margin comes back.
"""
from datetime import timedelta
from decimal import Decimal

import pytest

from apps.ledger.models import AccountKind, TransactionKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import Leg, account_get_or_create, ledger_post, system_account
from apps.ops.invariants import run_all_invariants
from apps.settlement.delivery import delivery_advance
from apps.settlement.models import DeliverySettlement
from apps.settlement.services import funding_settle
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.services import order_cancel, order_place

from .conftest import T8
from .test_delivery import DT, ONBOARD, flat_hour, quarterly, trade  # noqa: F401 (quarterly: a fixture)

D = Decimal
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("lock_path")]


def amount(kind, user=None) -> Decimal:
    account = account_get_or_create(kind=kind, user=user) if user else system_account(kind)
    return balance_amount(account=account, asset_code="USDT")


def insurance_fund(value: str) -> None:
    ledger_post(kind=TransactionKind.INSURANCE, legs=[Leg(system_account(AccountKind.EXTERNAL), "USDT", -D(value)),
                                                      Leg(system_account(AccountKind.INSURANCE_FUND), "USDT", D(value))])


def test_a_funding_payer_short_of_wallet_borrows_against_its_order_margin(btcusdt, funded, position, mark, samples,
                                                                          settings):
    settings.RISK_PRETRADE_ENABLED = False
    alice, carol = funded("alice", "1000"), funded("carol", "74.8")
    position(alice, btcusdt, "0.010")
    position(carol, btcusdt, "-0.010")
    insurance_fund("10")
    mark(btcusdt, "50000", T8 - timedelta(seconds=1))
    # Two resting bids hold 0.02 × 49,500 × (1/20 + 0.0004) = 49.896 and 24.696: 0.208 stays free.
    bid = order_place(user=carol, contract=btcusdt, side="BUY", quantity=D("0.02"), price=D("49500"))
    order_place(user=carol, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D("49000"))
    free = amount(AccountKind.WALLET, carol)
    held = amount(AccountKind.ORDER_MARGIN, carol)
    assert (free, held) == (D("0.208"), D("74.592"))
    samples(btcusdt, T8, ["-0.001"])  # −0.0009: carol owes 0.45
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    assert run.covered == 0 and amount(AccountKind.INSURANCE_FUND) == D("10")
    assert amount(AccountKind.WALLET, carol) == 0
    assert amount(AccountKind.RECEIVABLE, carol) == free - D("0.45")
    assert run_all_invariants() == []
    order_cancel(user=carol, contract=btcusdt, order_id=bid.pk)
    batch_process(SymbolEngine(btcusdt))
    assert amount(AccountKind.RECEIVABLE, carol) == 0
    assert amount(AccountKind.WALLET, carol) == D("0.208") + D("49.896") - D("0.45")
    assert run_all_invariants() == []


def test_a_delivery_loss_beyond_the_wallet_borrows_against_order_margin_on_another_contract(quarterly, btcusdt,
                                                                                           funded, settings):
    settings.RISK_PRETRADE_ENABLED = False
    insurance_fund("5000")
    alice, bob = funded("alice", "2600"), funded("bob")
    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    trade(quarterly, alice, bob, "1", "50000")  # alice (cross) long 1
    bid = order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.5"), price=D("40000"))
    free, held = amount(AccountKind.WALLET, alice), amount(AccountKind.ORDER_MARGIN, alice)
    flat_hour(quarterly, "48000")  # alice loses 2,000 + delivery fee 9.6
    delivery_advance(now=DT)
    run = DeliverySettlement.objects.get(contract=quarterly)
    owed = D("2009.6") - free
    assert 0 < owed < held
    assert (run.covered, run.bad_debt) == (0, 0) and amount(AccountKind.INSURANCE_FUND) == D("5000")
    assert amount(AccountKind.WALLET, alice) == 0 and amount(AccountKind.RECEIVABLE, alice) == -owed
    assert run_all_invariants() == []
    order_cancel(user=alice, contract=btcusdt, order_id=bid.pk)
    batch_process(SymbolEngine(btcusdt))
    assert amount(AccountKind.RECEIVABLE, alice) == 0 and amount(AccountKind.WALLET, alice) == held - owed
    assert run_all_invariants() == []


def test_a_delivery_expiring_the_order_that_backs_a_debt_repays_it(quarterly, btcusdt, funded, settings):
    """A user with no position on the delivered contract owes against a resting order there: the
    delivery expires the order and the released margin repays the debt first."""
    settings.RISK_PRETRADE_ENABLED = False
    insurance_fund("5000")
    alice, bob = funded("alice"), funded("bob", "3000")
    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    engine = SymbolEngine(btcusdt)
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("1"), price=D("50000"))
    batch_process(engine)  # bob long 1 BTCUSDT, taker fee 20
    order_place(user=bob, contract=quarterly, side="BUY", quantity=D("1.5"), price=D("30000"))
    held = amount(AccountKind.ORDER_MARGIN, bob)
    free = amount(AccountKind.WALLET, bob)
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("48000"))
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("1"), price=D("48000"), reduce_only=True)
    batch_process(engine)  # loss 2,000 + fee 19.2 beyond the free wallet: borrowed against the quarterly bid
    owed = D("2019.2") - free
    assert 0 < owed < held and amount(AccountKind.RECEIVABLE, bob) == -owed
    flat_hour(quarterly, "50000")
    delivery_advance(now=DT)
    run = DeliverySettlement.objects.get(contract=quarterly)
    assert run.orders_expired == 1 and run.order_margin_released == held and (run.covered, run.bad_debt) == (0, 0)
    assert amount(AccountKind.RECEIVABLE, bob) == 0 and amount(AccountKind.WALLET, bob) == held - owed
    assert amount(AccountKind.INSURANCE_FUND) == D("5000")
    assert run_all_invariants() == []
