"""Income lines without the two indexes nothing reads: the one on the transaction and the one on
the time alone (the API reads a user's lines through income_user_time). A funding or delivery
posting writes a line per position, and every index costs ~1-2 µs a line (2-4 s for a million
positions on a busy 2-core machine). The DELETE guard of a ledger transaction (migration 0004)
still finds its lines, by a scan: deleting a transaction is refused anyway, and never done.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0005_balance_updates_hot'),
    ]

    operations = [
        migrations.AlterField(
            model_name='income',
            name='created_at',
            field=models.DateTimeField(),
        ),
        migrations.AlterField(
            model_name='income',
            name='transaction',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='ledger.ledgertransaction'),
        ),
    ]
