from decimal import Decimal

import pytest
from django.utils import timezone

from apps.ledger.models import AccountKind, TransactionKind
from apps.ledger.services import Leg, ledger_post, system_account, wallet_deposit
from apps.liquidation.selectors import adl_cache_forget
from apps.marketdata.services import price_cache_clear, price_publish
from apps.positions.models import MarginType
from apps.positions.services import leverage_change, margin_type_change
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.services import order_place

from .helpers import isolated_of, wallet_of

D = Decimal


@pytest.fixture(autouse=True)
def _adl_cache():
    adl_cache_forget()
    # A mark a transactional test published (after commit, so to Redis, kept 24 h) would win over
    # the marks these tests publish (rolled back: never announced) when the contract id recurs.
    price_cache_clear(symbols=["BTCUSDT"])
    yield
    adl_cache_forget()


@pytest.fixture
def funded(make_user, usdt, btcusdt):
    def make(name: str, amount="100000", *, leverage: int | None = None, isolated: bool = False):
        user = make_user(name)
        wallet_deposit(user=user, asset=usdt, amount=D(amount))
        if isolated:
            margin_type_change(user=user, contract=btcusdt, margin_type=MarginType.ISOLATED)
        if leverage is not None:
            leverage_change(user=user, contract=btcusdt, leverage=leverage)
        return user

    return make


@pytest.fixture
def engine(btcusdt):
    return SymbolEngine(btcusdt)


@pytest.fixture
def mark(btcusdt):
    def publish(price, contract=None):
        price_publish(contract=contract or btcusdt, index_price=D(price), mark_price=D(price), at=timezone.now())

    return publish


@pytest.fixture
def trade(btcusdt, engine):
    """maker rests `side` qty @ price, taker takes it; one batch."""

    def run(maker, taker, side, qty, price):
        order_place(user=maker, contract=btcusdt, side=side, quantity=D(qty), price=D(price))
        order_place(user=taker, contract=btcusdt, side="SELL" if side == "BUY" else "BUY", quantity=D(qty),
                    price=D(price))
        return batch_process(engine)

    return run


@pytest.fixture
def fund_seed(usdt):
    def seed(amount):
        ledger_post(kind=TransactionKind.INSURANCE, legs=[
            Leg(system_account(AccountKind.INSURANCE_FUND), usdt, D(amount)),
            Leg(system_account(AccountKind.EXTERNAL), usdt, -D(amount))], memo="fund seed")

    return seed


@pytest.fixture
def gapped_long(funded, mark, btcusdt, engine):
    """alice: isolated long 2 @ 50,000 at 10× (margin 10,000: bankrupt at 45,000) bought from three
    shorts; bob long 1 from uma. The mark falls to 44,000 with no bid in the book."""
    alice = funded("alice", "20000", leverage=10, isolated=True)
    sam, tom, uma, bob = funded("sam", "1300"), funded("tom", "6000"), funded("uma"), funded("bob")
    mark("50000")
    order_place(user=sam, contract=btcusdt, side="SELL", quantity=D("0.5"), price=D("50000"))
    order_place(user=tom, contract=btcusdt, side="SELL", quantity=D("0.5"), price=D("50000"))
    order_place(user=uma, contract=btcusdt, side="SELL", quantity=D("2"), price=D("50000"))
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("2"), price=D("50000"))
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("1"), price=D("50000"))
    batch_process(engine)
    # Maker fees 0.02%: sam 5, tom 5, uma 20; alice's taker fee 40 and her margin leave the wallet.
    assert (wallet_of(sam), wallet_of(tom), wallet_of(uma)) == (D("1295"), D("5995"), D("99980"))
    assert (wallet_of(alice), isolated_of(alice, btcusdt)) == (D("9960"), D("10000"))
    mark("44000")
    return alice, sam, tom, uma, bob
