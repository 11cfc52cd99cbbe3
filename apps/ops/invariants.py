"""Every invariant of design section 2, gathered from the apps that own them."""
from apps.ledger.invariants import LEDGER_CHECKS, Violation
from apps.positions.invariants import POSITION_CHECKS
from apps.settlement.invariants import SETTLEMENT_CHECKS
from apps.trading.invariants import ORDER_CHECKS

ALL_CHECKS = (*LEDGER_CHECKS, *POSITION_CHECKS, *ORDER_CHECKS, *SETTLEMENT_CHECKS)


def run_all_invariants() -> list[Violation]:
    violations: list[Violation] = []
    for check in ALL_CHECKS:
        violations.extend(check())
    return violations
