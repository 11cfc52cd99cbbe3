"""A journal command that fails every batch it is in is isolated and set aside; the rest go through."""
from decimal import Decimal

from apps.ops.invariants import run_all_invariants
from apps.ops.models import Alert
from apps.trading.engine import SymbolEngine
from apps.trading.matcher import Matcher
from apps.trading.models import CommandStatus, OrderCommand, OrderStatus
from apps.trading.services import order_place

from .test_matching import held_of, wallet_of

D = Decimal


def test_poison_command_is_quarantined_and_the_symbol_moves_on(funded, btcusdt, monkeypatch,
                                                                django_capture_on_commit_callbacks):
    alice = funded("alice")
    orders = [order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D(40000 + i))
              for i in range(5)]
    poison = orders[2]
    real = SymbolEngine.command_records

    def records(self, commands):
        if any(c.order_id == poison.pk for c in commands):
            raise RuntimeError("cannot encode this command")
        return real(self, commands)

    monkeypatch.setattr(SymbolEngine, "command_records", records)
    matcher = Matcher(["BTCUSDT"], batch_size=100)
    matcher.acquire_leases()
    with django_capture_on_commit_callbacks(execute=True):  # the alert goes out after commit
        for _ in range(40):
            matcher.step()
            if not OrderCommand.objects.filter(status=CommandStatus.PENDING).exists():
                break
    statuses = dict(OrderCommand.objects.values_list("order_id", "status"))
    assert statuses.pop(poison.pk) == CommandStatus.QUARANTINED
    assert set(statuses.values()) == {CommandStatus.DONE}
    poison.refresh_from_db()
    assert poison.status == OrderStatus.REJECTED and poison.margin_held == 0
    assert held_of(alice) == sum(o.margin_held for o in orders if o.pk != poison.pk)
    assert wallet_of(alice) + held_of(alice) == D("100000")
    assert run_all_invariants() == []
    alert = Alert.objects.get(key=f"matcher_poison:BTCUSDT:{poison.commands.get().seq}")
    assert alert.level == "CRITICAL" and "cannot encode" in alert.details["error"]
