"""Order entry's locks in one statement: the contract status, the balances, the position."""
from decimal import Decimal

from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.contracts.lifecycle import status_share_lock
from apps.ledger.models import AccountKind
from apps.ledger.services import account_get_or_create, ledger_transfer, user_balances_lock, wallet_deposit
from apps.positions.models import Position
from apps.positions.services import entry_lock, position_and_balances_lock

D = Decimal


def test_entry_lock_reads_what_the_separate_locks_read_in_one_statement(make_user, usdt, btcusdt):
    alice = make_user("alice")
    wallet_deposit(user=alice, asset=usdt, amount=D("1000"))
    ledger_transfer(source=account_get_or_create(kind=AccountKind.WALLET, user=alice),
                    destination=account_get_or_create(kind=AccountKind.ORDER_MARGIN, user=alice),
                    asset=usdt, amount=D("12.5"))
    Position.objects.create(user=alice, contract=btcusdt, size=D("-0.3"), entry_price=D("50000"), leverage=7)
    with transaction.atomic():
        with CaptureQueriesContext(connection) as queries:
            status, position, balances, accounts = entry_lock(user=alice, contract=btcusdt)
        assert len(queries) == 1
        assert accounts == {kind: account_get_or_create(kind=kind, user=alice).pk
                            for kind in (AccountKind.WALLET, AccountKind.ORDER_MARGIN)}
        assert status == status_share_lock(btcusdt.pk)
        assert balances == user_balances_lock(user_id=alice.pk, asset=usdt)
        assert list(balances.values()) == [D("987.5"), D("12.5")]  # by account id: wallet, then order margin
        stored = Position.objects.get(pk=position.pk)
        assert {f.attname: getattr(position, f.attname) for f in Position._meta.concrete_fields} == \
            {f.attname: getattr(stored, f.attname) for f in Position._meta.concrete_fields}
        assert not position._state.adding and position.leverage == 7


def test_entry_lock_creates_a_missing_position(make_user, usdt, btcusdt):
    bob = make_user("bob")
    with transaction.atomic():
        status, position, balances, accounts = entry_lock(user=bob, contract=btcusdt, status=False)
    assert status is None and balances == {} and accounts == {}
    assert position.pk == Position.objects.get(user=bob, contract=btcusdt).pk and position.size == 0
    with transaction.atomic():
        assert position_and_balances_lock(user=bob, contract=btcusdt)[0].pk == position.pk
