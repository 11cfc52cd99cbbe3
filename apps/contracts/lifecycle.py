"""The one place a contract's status changes: allowed transitions and their history.

Delivery contracts walk PENDING → TRADING → CLOSE_ONLY → SETTLING → SETTLED on the
scheduler's clock (`apps.settlement.delivery`); perpetuals go PENDING → TRADING. Ops
can HALT any contract that is not settling or settled, and resume a halted one to the
status it was halted from. Each change is a `ContractStatusChange` row written in the
same transaction as the status, under the contract's row lock, so two schedulers (or a
scheduler and an ops action) racing on one contract record each step exactly once.

The row lock is also what keeps order entry and the matcher consistent with the
status: order entry and each matcher batch read the status FOR SHARE, so a change
waits for the batches and orders in flight, and everything after it sees the new one.
"""
from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from exchange.errors import ErrorCode, ExchangeError

from .models import Contract, ContractStatus, ContractStatusChange

S = ContractStatus
TRANSITIONS: dict[str, tuple[str, ...]] = {
    S.PENDING: (S.TRADING, S.HALTED),
    S.TRADING: (S.CLOSE_ONLY, S.HALTED),
    S.CLOSE_ONLY: (S.SETTLING, S.HALTED),
    S.HALTED: (S.TRADING, S.CLOSE_ONLY, S.PENDING),
    S.SETTLING: (S.SETTLED,),
    S.SETTLED: (),
}
# Statuses in which the matcher matches and order entry accepts orders (reduce-only in CLOSE_ONLY).
ACCEPTING_STATUSES = (S.TRADING, S.CLOSE_ONLY)


class ContractStatusError(ExchangeError):
    code = ErrorCode.INVALID_PARAMETER


def contract_status_set(*, contract: Contract, to_status: str, reason: str, at: datetime | None = None,
                        actor=None, expect: tuple[str, ...] | None = None) -> bool:
    """Move a contract to `to_status` and record it; returns False when it already was there.

    `expect`: the statuses the caller's decision was based on; when another process moved
    the contract on meanwhile, nothing changes (False) instead of an error. Raises
    `ContractStatusError` for a transition the lifecycle does not allow.
    """
    at = at or timezone.now()
    with transaction.atomic():
        # NO KEY UPDATE: waits for the FOR SHARE readers (batches, order entry) but not for, nor
        # blocks, rows being inserted that reference the contract (their key-share checks).
        current = Contract.objects.select_for_update(no_key=True).values_list("status", flat=True) \
            .get(pk=contract.pk)
        if current == to_status or (expect is not None and current not in expect):
            contract.status = current
            return False
        if to_status not in TRANSITIONS[current]:
            raise ContractStatusError(f"{contract.symbol} cannot go from {current} to {to_status}.")
        Contract.objects.filter(pk=contract.pk).update(status=to_status, updated_at=timezone.now())
        ContractStatusChange.objects.create(contract=contract, from_status=current, to_status=to_status, at=at,
                                            reason=reason[:255], actor=actor)
    contract.status = to_status
    transaction.on_commit(_forget_cached_contracts)
    return True


def contract_halt(*, contract: Contract, actor, reason: str = "halted by ops") -> bool:
    if contract.status in (S.SETTLING, S.SETTLED):
        raise ContractStatusError(f"{contract.symbol} is {contract.status}: it can no longer be halted.")
    return contract_status_set(contract=contract, to_status=S.HALTED, reason=reason, actor=actor)


def contract_resume(*, contract: Contract, actor, reason: str = "resumed by ops") -> bool:
    """Back to the status the contract was halted from (the scheduler moves it on if that is overdue)."""
    if contract.status != S.HALTED:
        raise ContractStatusError(f"{contract.symbol} is not halted.")
    last = contract.status_changes.filter(to_status=S.HALTED).order_by("-at", "-id").first()
    previous = last.from_status if last is not None else S.TRADING
    return contract_status_set(contract=contract, to_status=previous, reason=reason, actor=actor,
                               expect=(S.HALTED,))


def status_share_lock(contract_id: int) -> str:
    """The contract's current status, read FOR SHARE: a status change waits for this transaction."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT status FROM contracts_contract WHERE id = %s FOR SHARE", [contract_id])
        return cursor.fetchone()[0]


def book_exclusive_lock(contract_id: int) -> str:
    """The contract's current status, its row locked NO KEY UPDATE: no matcher batch and no order
    entry runs on the contract until this transaction ends (both read the status FOR SHARE), and
    one in flight is waited for. Taken first, before any balance, by a change to the book's
    orders made outside the matcher (an ADL step)."""
    return Contract.objects.select_for_update(no_key=True).values_list("status", flat=True).get(pk=contract_id)


def book_changed(contract_id: int) -> None:
    """Under `book_exclusive_lock`: the resting orders changed outside the matcher, whose next
    batch rebuilds its book from the database (`Contract.book_version`)."""
    Contract.objects.filter(pk=contract_id).update(book_version=F("book_version") + 1)


def _forget_cached_contracts() -> None:
    from exchange.params import contracts_forget

    contracts_forget()
