"""`check_ledger` passes on a clean ledger and names what broke on a corrupted one."""
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from apps.ledger.services import wallet_deposit
from apps.positions.models import Position

D = Decimal


def run_check() -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("check_ledger", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_clean_ledger_passes(alice, usdt):
    wallet_deposit(user=alice, asset=usdt, amount=D("10"))
    out, err = run_check()
    assert "invariant checks passed" in out and err == ""


def test_corrupted_balance_is_caught(alice, usdt, wallet):
    wallet_deposit(user=alice, asset=usdt, amount=D("10"))
    with connection.cursor() as cursor:  # bypass the service, as a bad migration or manual SQL would
        cursor.execute("UPDATE ledger_balance SET amount = amount + 1 WHERE account_id = %s", [wallet(alice).pk])
    err = StringIO()
    with pytest.raises(CommandError, match="violation"):
        call_command("check_ledger", stdout=StringIO(), stderr=err)
    report = err.getvalue()
    assert "balances_match_entries" in report and "balances_sum_to_zero" in report


def test_unbalanced_open_interest_is_caught(alice, btcusdt):
    Position.objects.create(user=alice, contract=btcusdt, size=D("1.5"), entry_price=D("50000"))
    err = StringIO()
    with pytest.raises(CommandError):
        call_command("check_ledger", stdout=StringIO(), stderr=err)
    assert "open_interest_balanced: BTCUSDT" in err.getvalue()
