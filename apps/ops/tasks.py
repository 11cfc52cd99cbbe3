"""Ops jobs: the scheduler heartbeat that `/readyz` reads."""
from celery import shared_task

from .health import heartbeat_record


@shared_task(ignore_result=True)
def beat_heartbeat() -> None:
    # Fired by beat and run by a worker: a fresh value proves both are alive.
    heartbeat_record("beat")
