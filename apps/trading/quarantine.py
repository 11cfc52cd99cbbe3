"""Poison commands: a journal command that fails its batch every time is set aside.

The matcher retries a failed batch (the transaction rolled back, the book is rebuilt).
A failure that repeats is narrowed down by processing one command per batch; the
command that still fails alone is marked QUARANTINED in one transaction that also
closes what it would have opened — a NEW order is REJECTED and its margin hold
returned; an AMEND's extra hold is returned — and ops get a critical alert naming it.
Without this one bad row would stop its symbol's matching for good.
"""
import logging

from django.db import transaction
from django.db.models.functions import Now

from apps.positions.booking import order_margin_release

from .models import OPEN_STATUSES, CommandKind, CommandStatus, Order, OrderCommand, OrderStatus

logger = logging.getLogger(__name__)


def command_quarantine(*, seq: int, error: str) -> OrderCommand | None:
    """Set a PENDING command aside; returns it, or None when it is no longer pending."""
    with transaction.atomic():
        # Only the command row: the contract row is what status changes lock (FOR SHARE elsewhere).
        command = (OrderCommand.objects.select_for_update(of=("self",))
                   .select_related("order", "contract__settle_asset")
                   .filter(seq=seq, status=CommandStatus.PENDING).first())
        if command is None:
            return None
        order = Order.objects.select_for_update().get(pk=command.order_id)
        release = 0
        if command.kind == CommandKind.NEW and order.status in OPEN_STATUSES and order.priority is None:
            release = order.margin_held
            Order.objects.filter(pk=order.pk).update(status=OrderStatus.REJECTED, margin_held=0)
        elif command.kind == CommandKind.AMEND:
            release = command.margin_added
        if release:
            order_margin_release(user_id=order.user_id, asset=command.contract.settle_asset, amount=release,
                                 reference={"order_id": order.pk, "quarantined_seq": seq})
        OrderCommand.objects.filter(seq=seq).update(status=CommandStatus.QUARANTINED, processed_at=Now())
        transaction.on_commit(lambda: _alert(command, error))
    logger.error("command #%s (%s order %s) quarantined: %s", seq, command.kind, command.order_id, error)
    return command


def _alert(command: OrderCommand, error: str) -> None:
    from apps.ops.alerts import alert_raise

    try:
        alert_raise(key=f"matcher_poison:{command.contract.symbol}:{command.seq}", level="CRITICAL",
                    message=f"Matcher set aside journal command #{command.seq} ({command.kind} order "
                            f"{command.order_id}) after it failed alone: {error[:200]}",
                    details={"seq": command.seq, "order_id": command.order_id, "error": error[:2000]})
    except Exception:
        logger.exception("alert for quarantined command #%s not raised", command.seq)
