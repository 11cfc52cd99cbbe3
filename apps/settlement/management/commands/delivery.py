"""Delivery contracts by hand: list one, advance every lifecycle (as the beat does), or one contract.

    manage.py delivery list BTCUSDT 2027-03-26      # BTCUSDT_270326, 08:00 UTC, spec copied from the base
    manage.py delivery advance                      # roll, notices, close-only, settling, settlement
    manage.py delivery advance --symbol BTCUSDT_261225
"""
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.contracts.models import Contract, ContractType
from apps.settlement.delivery import DeliveryError, delivery_advance, delivery_advance_one, delivery_list, \
    parse_delivery_date


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="List a delivery contract for a base symbol and a date.")
        listing.add_argument("base_symbol")
        listing.add_argument("date", help="YYYY-MM-DD; delivery at 08:00 UTC")
        advance = sub.add_parser("advance", help="Run the lifecycle steps that are due.")
        advance.add_argument("--symbol")

    def handle(self, *args, action, **options):
        try:
            if action == "list":
                contract = delivery_list(base_symbol=options["base_symbol"].upper(),
                                         delivery_time=parse_delivery_date(options["date"]))
                self.stdout.write(f"listed {contract.symbol}: delivery {contract.delivery_time:%Y-%m-%d %H:%M} UTC, "
                                  f"{contract.status}")
                return
            symbol = options.get("symbol")
            if symbol is None:
                steps = delivery_advance()
            else:
                contract = Contract.objects.select_related("settle_asset").filter(
                    symbol=symbol, contract_type=ContractType.DELIVERY).first()
                if contract is None:
                    raise CommandError(f"Unknown delivery contract {symbol}.")
                steps = [f"{symbol}: {s}" for s in delivery_advance_one(contract=contract, now=timezone.now())]
        except DeliveryError as exc:
            raise CommandError(str(exc)) from exc
        for step in steps or ["nothing due"]:
            self.stdout.write(step)
