"""The ledger's trigger functions plan their reference checks with `enable_seqscan = off`.

PL/pgSQL plans a trigger's statements once per connection and keeps the plan until an
ANALYZE or VACUUM of a table it reads invalidates it. A plan made while
`ledger_ledgertransaction` or `ledger_balance` was small reads the whole table (a
sequential scan, or a hash of it) at every posting, for as long as the connection lives:
on a server without autovacuum (this project's CI server runs with `autovacuum = off`)
that is forever, and a matcher or web worker's every posting got slower with every
transaction booked (a soak run fell from 163 to 80 events/s in 50,000 events, the
entries' trigger scanning all 37,000 transactions each time). With sequential scans
priced out the checks probe the primary keys and unique indexes, whatever the tables'
size was when they were planned; the transition tables (new entries, new income lines)
are read whole as before.
"""

from django.db import migrations

FUNCTIONS = ("ledger_entries_balanced()", "ledger_income_references()", "ledger_referenced_keep()")


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0007_entries_transaction_brin'),
    ]

    operations = [
        migrations.RunSQL(
            [f"ALTER FUNCTION {f} SET enable_seqscan = off" for f in FUNCTIONS],
            [f"ALTER FUNCTION {f} RESET enable_seqscan" for f in FUNCTIONS],
        ),
    ]
