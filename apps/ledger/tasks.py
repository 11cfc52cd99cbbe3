"""Scheduled ledger invariant check; the last result is kept in Redis for ops pages."""
import json
import logging
import time

from celery import shared_task

from exchange.redis import get_redis

logger = logging.getLogger(__name__)
LAST_RESULT_KEY = "ops:invariants:last"


@shared_task(ignore_result=True)
def ledger_check_invariants() -> int:
    from apps.ops.invariants import run_all_invariants

    violations = run_all_invariants()
    for violation in violations:
        logger.error("ledger invariant broken: %s", violation)
    get_redis().set(
        LAST_RESULT_KEY,
        json.dumps({"at": time.time(), "violations": [str(v) for v in violations]}),
    )
    return len(violations)
