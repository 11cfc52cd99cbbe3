"""Settle funding by hand: every due time (as the beat does), or one symbol and time.

    manage.py funding_settle                      # all due funding times, missed ones included
    manage.py funding_settle --symbol BTCUSDT --time 2026-11-25T08:00:00Z
"""
from datetime import datetime, timezone

from django.core.management.base import BaseCommand, CommandError

from apps.contracts.models import Contract
from apps.settlement.services import funding_settle, funding_settle_due


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser):
        parser.add_argument("--symbol")
        parser.add_argument("--time", help="ISO time in UTC, e.g. 2026-11-25T08:00:00Z")

    def handle(self, *args, symbol=None, time=None, **options):
        if bool(symbol) != bool(time):
            raise CommandError("Give both --symbol and --time, or neither.")
        if symbol is None:
            runs = funding_settle_due()
        else:
            contract = Contract.objects.select_related("settle_asset").filter(symbol=symbol).first()
            if contract is None:
                raise CommandError(f"Unknown symbol {symbol}.")
            try:
                at = datetime.fromisoformat(time.replace("Z", "+00:00"))
            except ValueError as exc:
                raise CommandError(f"Bad --time {time!r}: {exc}") from exc
            if at.tzinfo is None:
                at = at.replace(tzinfo=timezone.utc)
            try:
                runs = [funding_settle(contract=contract, funding_time=at)]
            except Exception as exc:
                raise CommandError(str(exc)) from exc
        for run in runs:
            self.stdout.write(f"{run.contract.symbol} {run.funding_time:%Y-%m-%d %H:%M} {run.status} "
                              f"rate={run.funding_rate} positions={run.positions} dust={run.dust}")
