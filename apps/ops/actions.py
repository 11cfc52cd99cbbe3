"""Automatic handling of a firing alert (the seed's `auto_handle_alert`), where it is safe.

An action runs once, after the alert starts firing, and may only gather diagnostics
or do something that cannot change trading or money; what it returns is stored in
the alert's details under `auto_action`. Keys in `NO_AUTO_ACTION` say why nothing is
done automatically for them; the seed's scale-out / restart-pool / add-consumers
actions belong to the process supervisor or orchestrator, not to this application.
Other apps add actions with `@action_register("source.or.event.kind")`.
"""
import logging
from collections.abc import Callable

import psutil

from exchange.redis import get_redis

logger = logging.getLogger(__name__)

ACTIONS: dict[str, Callable] = {}

NO_AUTO_ACTION = {
    "ledger.invariant_violations": "No action is taken automatically for a broken ledger invariant: the books "
    "must be inspected by a person (manage.py check_ledger) before anything is halted or corrected.",
    "risk.insurance_fund_balance": "No action is taken automatically for a low insurance fund: topping it up "
    "is a treasury decision booked through the admin.",
    "trading.orders_per_second": "No action is taken automatically for a high order rate: throttling clients "
    "is a policy decision.",
    "ops.beat_heartbeat_age": "No action is taken automatically for a lost beat heartbeat: the supervisor "
    "restarts beat; a second beat instance is harmless (jobs are idempotent).",
    "ops.pricefeed_heartbeat_age": "No action is taken automatically for a stale price feed: the mark price "
    "service falls back to the last mark by itself; pausing trading is a manual decision.",
    "job_failure": "No action is taken automatically for a failed job: funding and delivery jobs are idempotent "
    "per (symbol, time) and are re-run by hand or on their next schedule.",
    "backup_failure": "No action is taken automatically for a failed backup: run manage.py backup after fixing "
    "the cause.",
    "db.autovacuum_off": "No action is taken automatically for a server without autovacuum: it is the database "
    "server's setting (README, Database server).",
}


def action_register(key: str):
    def register(func: Callable):
        ACTIONS[key] = func
        return func

    return register


@action_register("system.cpu_percent")
def cpu_top_processes(alert) -> dict:
    """Diagnostics only: the busiest processes on this host when CPU use fired."""
    rows = []
    for proc in psutil.process_iter(["pid", "name", "cpu_percent", "memory_percent"]):
        rows.append(proc.info)
    rows.sort(key=lambda row: row.get("cpu_percent") or 0, reverse=True)
    return {"top_processes": rows[:10]}


@action_register("ops.matcher_heartbeat_age")
def matcher_leader_snapshot(alert) -> dict:
    """Diagnostics only: which pid held the symbol's lease. A standby matcher takes the
    lease by itself when the leader's database session ends; nothing is restarted here."""
    from .health import MATCHER_LEADER_KEY

    leader = get_redis().get(MATCHER_LEADER_KEY.format(symbol=alert.label)) if alert.label else None
    return {"last_leader_pid": int(leader) if leader else None}


@action_register("db.hot_table_dead_rows")
def hot_table_vacuum_diagnostics(alert) -> dict:
    """Diagnostics only: the table's last vacuums and the oldest open transaction, which holds
    back what any vacuum can remove. Ending that transaction is an operator's call."""
    from .maintenance import vacuum_diagnostics

    return vacuum_diagnostics(alert.label)


def action_for(key: str) -> tuple[Callable | None, str]:
    kind = key.split(":", 1)[0]
    for candidate in (key, kind):
        if candidate in ACTIONS:
            return ACTIONS[candidate], ""
        if candidate in NO_AUTO_ACTION:
            return None, NO_AUTO_ACTION[candidate]
    return None, "No automatic action is registered for this alert."


def action_run_for(*, alert_id: int) -> None:
    """Run the registered action of a just-fired alert and record what it did."""
    from .models import Alert

    alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None:
        return
    action, reason = action_for(alert.key)
    if action is None:
        outcome = {"action": None, "note": reason}
    else:
        try:
            outcome = {"action": action.__name__, **action(alert)}
        except Exception as exc:
            logger.exception("automatic action for alert %s failed", alert_id)
            outcome = {"action": action.__name__, "error": str(exc)[:500]}
    Alert.objects.filter(pk=alert_id).update(details={**alert.details, "auto_action": outcome})
