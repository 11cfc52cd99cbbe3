"""Balance updates without index writes (HOT): room on every page for a new row version.

A funding or delivery posting updates one balance row per position. With pages packed
full (the default fillfactor 100) each update writes the row elsewhere and a new entry
in every index of the table (~4x the cost). A fillfactor of 45 leaves room for a new
version of every row on its page, so the update is HOT (PostgreSQL prunes the old
versions when it next reads the page); none of the updated columns is indexed. The
redundant single-column indexes go too. Pages already written keep their fill until
the table is rewritten (VACUUM FULL ledger_balance, once, on an existing database).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0004_bulk_references_checked_per_statement'),
    ]

    operations = [
        migrations.AlterField(
            model_name='balance',
            name='account',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='balances', to='ledger.account'),
        ),
        migrations.AlterField(
            model_name='balance',
            name='asset',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='ledger.asset'),
        ),
        migrations.RunSQL("ALTER TABLE ledger_balance SET (fillfactor = 45)",
                          "ALTER TABLE ledger_balance RESET (fillfactor)"),
    ]
