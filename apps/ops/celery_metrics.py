"""Prometheus for the Celery processes: an exporter per worker process and for beat.

Celery signals start a small HTTP exporter (`metrics.metrics_serve`) in each Celery
process, on ports from settings:
- beat: `OPS_METRICS_PORT_BEAT` (9103);
- a worker's main process: `OPS_METRICS_PORT_WORKER` (9110); with the prefork pool each
  child process, where tasks run and count, serves its own registry on
  `OPS_METRICS_PORT_WORKER + 1 + <child index>` (9111, 9112, … for --concurrency 2;
  a replaced child reuses its index and so its port). With the solo or threads pool the
  tasks run in the main process and its port has everything.
Task metrics (counted wherever the signal fires): `celery_tasks_total{task,state}`
(succeeded, failed, retried), `celery_task_runtime_seconds{task}`, and
`celery_tasks_sent_total{task}` in every process that sends (beat's schedule, web).
Port 0 turns an exporter off; a port already taken is logged, never fatal.
Beat also waits here for its leader lease (apps.ops.leases) once its exporter is up.

Logging: Celery would replace the root handler with its own line format; instead its
processes keep the project's (exchange/settings/logging.py, LOG_FORMAT), at the
--loglevel given, and each task's log lines carry `task_id` and `task` (exchange.logs).
"""
import logging
import time

from celery import signals
from prometheus_client import Counter, Histogram

from exchange.logs import log_context_pop, log_context_push

from .metrics import metrics_serve

logger = logging.getLogger(__name__)

TASKS = Counter("celery_tasks_total", "Tasks finished in this process", ["task", "state"])
TASKS_SENT = Counter("celery_tasks_sent_total", "Tasks sent by this process", ["task"])
TASK_RUNTIME = Histogram(
    "celery_task_runtime_seconds", "Task run time", ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
_started: dict[str, float] = {}
_log_tokens: dict[str, object] = {}


def _setting(name: str, default: int) -> int:
    from django.conf import settings

    return int(getattr(settings, name, default))


def _on_worker_init(**_):
    metrics_serve(_setting("OPS_METRICS_PORT_WORKER", 9110), role="celery-worker")


def _on_worker_process_init(**_):
    # A prefork child: its own counters, so its own port (the parent's server thread
    # did not survive the fork, and its socket belongs to the parent).
    from billiard.process import current_process

    index = getattr(current_process(), "index", 0) or 0
    base = _setting("OPS_METRICS_PORT_WORKER", 9110)
    metrics_serve(base + 1 + index if base else 0, role="celery-worker-child")


_beat_lease = None


def _on_beat_init(**_):
    global _beat_lease
    metrics_serve(_setting("OPS_METRICS_PORT_BEAT", 9103), role="celery-beat")
    # Then the single-active-beat lease (apps.ops.leases): a second beat blocks here as
    # a standby, with its exporter already up to say so.
    from .leases import beat_lease_wait

    _beat_lease = beat_lease_wait()


def _on_setup_logging(loglevel=None, **_):
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
    if loglevel:
        logging.getLogger().setLevel(loglevel)


def _on_prerun(task_id=None, task=None, **_):
    _started[task_id] = time.perf_counter()
    _log_tokens[task_id] = log_context_push(task_id=task_id, task=getattr(task, "name", "unknown"))


def _on_postrun(task_id=None, task=None, state=None, **_):
    token = _log_tokens.pop(task_id, None)
    if token is not None:
        try:
            log_context_pop(token)
        except ValueError:  # not this thread's context (a pool that moved the task): nothing to undo here
            pass
    started = _started.pop(task_id, None)
    name = getattr(task, "name", "unknown")
    if started is not None:
        TASK_RUNTIME.labels(name).observe(time.perf_counter() - started)
    if state in ("SUCCESS", "FAILURE", "RETRY"):
        TASKS.labels(name, {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}[state]).inc()


def _on_publish(sender=None, headers=None, **_):
    TASKS_SENT.labels((headers or {}).get("task") or str(sender)).inc()


def connect() -> None:
    signals.setup_logging.connect(_on_setup_logging, weak=False, dispatch_uid="ops-logging")
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="ops-metrics-worker")
    signals.worker_process_init.connect(_on_worker_process_init, weak=False, dispatch_uid="ops-metrics-child")
    signals.beat_init.connect(_on_beat_init, weak=False, dispatch_uid="ops-metrics-beat")
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="ops-metrics-prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="ops-metrics-postrun")
    signals.before_task_publish.connect(_on_publish, weak=False, dispatch_uid="ops-metrics-publish")
