"""Risk jobs: hourly volatility estimates, and the account assessment run spread over
workers as a Celery group of chunks.

Tasks only parse and call services. There is no result backend, so the run is not a
chord: each chunk closes the run itself when the last listed account has its snapshot
(`services._run_finish`, under the run's row lock).
"""
import logging

from celery import group, shared_task
from django.db import transaction

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True, expires=3000)
def risk_volatility_update_task() -> int:
    """Hourly from beat: every contract's volatility estimate and margin adjustments,
    then retention of old snapshots."""
    from .services import risk_snapshots_prune, risk_volatility_update_all

    rows = risk_volatility_update_all()
    risk_snapshots_prune()
    return len(rows)


@shared_task(ignore_result=True, expires=600)
def risk_assess_task() -> int:
    """From beat every RISK_ASSESS_INTERVAL_SECONDS: open the bucket's run (nothing if it
    exists) and hand its chunks to the workers after commit."""
    from apps.ops.alerts import alert_raise
    from apps.ops.models import AlertLevel

    from .services import risk_run_start

    try:
        plan = risk_run_start()
    except Exception as exc:
        logger.exception("risk run could not start")
        alert_raise(key="job_failure:risk_assess", level=AlertLevel.HIGH,
                    message=f"Risk assessment run could not start: {exc!r}")
        raise
    if plan is None or not plan.chunks:
        return 0
    jobs = group(risk_assess_chunk_task.s(plan.run.pk, chunk) for chunk in plan.chunks)
    transaction.on_commit(jobs.apply_async)
    return len(plan.chunks)


@shared_task(ignore_result=True, acks_late=True)
def risk_assess_chunk_task(run_id: int, user_ids: list[int]) -> int:
    from .services import risk_assess_chunk, risk_run_fail

    try:
        return risk_assess_chunk(run_id=run_id, user_ids=user_ids)
    except Exception as exc:
        logger.exception("risk chunk of run %s failed", run_id)
        risk_run_fail(run_id=run_id, error=repr(exc))
        raise
