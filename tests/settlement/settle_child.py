"""Child process of the process tests: settle one (symbol, funding time) and print the run.

    settle_child.py MODE SYMBOL FUNDING_MS
MODE "settle" just settles; "die-half-way" books the ledger posting and the income lines
inside the settlement's transaction, then kills itself with SIGKILL before the run is
recorded and committed (a worker lost mid-job: PostgreSQL rolls the open transaction back
when the connection drops); "die-in-second-chunk" (a run booked in chunks, one worker)
books the second chunk and kills itself before that chunk commits.
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings.test")

import django  # noqa: E402

django.setup()

from apps.contracts.models import Contract  # noqa: E402
from apps.marketdata.engine.quotes import ms_to_datetime  # noqa: E402
from apps.settlement import services  # noqa: E402

if os.environ.get("SETTLE_TABLE_LOCK_FROM"):  # the test's lock path (test_processes._lock_path)
    from apps.ledger import services as ledger_services

    ledger_services.TABLE_LOCK_FROM = int(os.environ["SETTLE_TABLE_LOCK_FROM"])


def main() -> None:
    mode, symbol, funding_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "die-half-way":
        original = services._incomes_insert

        def book_then_die(**kwargs):
            original(**kwargs)
            sys.stdout.write("booked\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        services._incomes_insert = book_then_die
    elif mode == "die-in-second-chunk":
        original_chunk = services._chunk_book

        def die_in_the_second(*, chunk, **kwargs):
            if chunk.number == 1:
                original_chunk(chunk=chunk, **kwargs)  # booked, not committed
                sys.stdout.write("chunk 1 booked\n")
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            original_chunk(chunk=chunk, **kwargs)

        services._chunk_book = die_in_the_second
    contract = Contract.objects.select_related("settle_asset").get(symbol=symbol)
    run = services.funding_settle(contract=contract, funding_time=ms_to_datetime(funding_ms))
    print(run.pk, run.status, run.ledger_transaction_id, run.attempts)


if __name__ == "__main__":
    main()
