"""Child process of the delivery process tests: settle one delivery contract and print the run.

    delivery_child.py MODE SYMBOL
MODE "settle" advances the contract (as the beat does at delivery time); "die-half-way"
closes the positions and books the ledger posting and the income lines inside the
settlement's transaction, then kills itself with SIGKILL before the run is recorded and
committed (PostgreSQL rolls the open transaction back). "die-in-second-chunk" (a run booked
in chunks, one at a time) books the second chunk's income lines, then kills itself the same way.
"""
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings.test")

import django  # noqa: E402

django.setup()

from apps.contracts.models import Contract  # noqa: E402
from apps.settlement import delivery  # noqa: E402

if os.environ.get("SETTLE_TABLE_LOCK_FROM"):  # the test's lock path (test_processes._lock_path)
    from apps.ledger import services as ledger_services

    ledger_services.TABLE_LOCK_FROM = int(os.environ["SETTLE_TABLE_LOCK_FROM"])


def main() -> None:
    mode, symbol = sys.argv[1], sys.argv[2]
    if mode == "die-half-way":
        original = delivery._incomes_insert

        def book_then_die(**kwargs):
            original(**kwargs)  # the positions closed, the posting and the income lines written
            sys.stdout.write("booked\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        delivery._incomes_insert = book_then_die
    elif mode == "die-in-second-chunk":
        original, calls = delivery._incomes_insert, []

        def second_then_die(**kwargs):
            original(**kwargs)
            calls.append(1)
            if len(calls) == 2:
                sys.stdout.write("first chunk booked\n")
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

        delivery._incomes_insert = second_then_die
    contract = Contract.objects.select_related("settle_asset").get(symbol=symbol)
    steps = delivery.delivery_advance_one(contract=contract, now=contract.delivery_time + timedelta(minutes=1))
    print(symbol, " ".join(steps))


if __name__ == "__main__":
    main()
