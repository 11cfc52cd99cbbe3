"""A booking finds each user's position and accounts in one lookup, and creates what is missing."""
from decimal import Decimal

from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.ledger.models import Account, AccountKind
from apps.ledger.services import accounts_for_users, wallet_deposit
from apps.ops.invariants import run_all_invariants
from apps.positions import booking
from apps.positions.booking import Fill, fills_book
from apps.positions.models import MarginType, Position

D = Decimal


def test_the_one_lookup_finds_what_the_creating_lookups_created(make_user, usdt, btcusdt):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    for user in (alice, bob, carol):
        wallet_deposit(user=user, asset=usdt, amount=D("100000"))
    Position.objects.create(user=alice, contract=btcusdt, margin_type=MarginType.ISOLATED)
    users, releasing = {alice.pk, bob.pk, carol.pk}, {bob.pk}

    # Bob has no position, no order-margin account; alice's isolated position no margin account yet.
    created = booking._accounts_and_positions(btcusdt, users, releasing)
    with CaptureQueriesContext(connection) as queries:
        found = booking._accounts_and_positions(btcusdt, users, releasing)
    assert found == created and len(queries) == 1
    positions, wallets, isolated, order_margin, receivables = found
    assert positions == dict(Position.objects.filter(contract=btcusdt).values_list("user_id", "pk"))
    assert wallets == accounts_for_users(kind=AccountKind.WALLET, user_ids=users)
    assert isolated == accounts_for_users(kind=AccountKind.ISOLATED_MARGIN, user_ids={alice.pk}, contract=btcusdt)
    assert order_margin == accounts_for_users(kind=AccountKind.ORDER_MARGIN, user_ids=releasing)
    assert not Account.objects.filter(kind=AccountKind.ORDER_MARGIN, user__in=(alice, carol)).exists()
    assert receivables == {}  # only a loss borrowed against order margin creates one


def test_first_fills_create_positions_and_isolated_margin_then_close(make_user, usdt, btcusdt):
    alice, bob = make_user("alice"), make_user("bob")
    for user in (alice, bob):
        wallet_deposit(user=user, asset=usdt, amount=D("100000"))
    Position.objects.create(user=alice, contract=btcusdt, margin_type=MarginType.ISOLATED, leverage=10)
    for alice_buys in (True, False):  # open (creates what is missing), then close (finds it all)
        fills_book(contract=btcusdt, releases={bob.pk: D(0)}, reference={"test": True},
                   fills=[Fill(taker_user_id=alice.pk, maker_user_id=bob.pk, taker_is_buyer=alice_buys,
                               price=D("50000"), quantity=D("0.1"))])
        assert run_all_invariants() == []
        if alice_buys:
            iso = Account.objects.get(kind=AccountKind.ISOLATED_MARGIN, user=alice, contract=btcusdt)
            assert iso.balances.get().amount == D("500")  # 0.1 × 50,000 / 10
    assert dict(Position.objects.filter(contract=btcusdt).values_list("user_id", "size")) == {alice.pk: 0, bob.pk: 0}
    assert iso.balances.get().amount == 0
