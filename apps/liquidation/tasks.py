"""Liquidation jobs: the sweep from beat (every 2 s), the advance kicked by the matcher, and the
nominees of the pricefeed's on-mark screen. Tasks only call one service."""
from celery import shared_task

from .services import liquidation_nominees_process, liquidation_sweep, liquidations_advance


@shared_task(ignore_result=True, expires=5)
def liquidation_sweep_task() -> dict:
    """Screen all open positions at the latest marks, margin-call and liquidate, advance liquidations."""
    return liquidation_sweep()


@shared_task(ignore_result=True, expires=30)
def liquidations_advance_task() -> dict:
    return liquidations_advance()


@shared_task(ignore_result=True, expires=5)
def liquidation_nominees_task(*, cross, isolated) -> dict:
    return liquidation_nominees_process(cross=[tuple(x) for x in cross], isolated=[tuple(x) for x in isolated])
