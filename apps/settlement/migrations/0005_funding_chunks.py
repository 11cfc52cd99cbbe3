"""Funding settlements booked in chunks (`FundingChunk`).

The chunk's arrays are stored uncompressed (STORAGE EXTERNAL): compressing a million
payments cost ~1.5 s of a 1M-position settlement's planning (bench/funding.py), and they
are emptied once booked.
"""

import django.contrib.postgres.fields
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0011_bulk_triggers_trust_settlement_statements'),
        ('settlement', '0004_settle_permissions'),
    ]

    operations = [
        migrations.AddField(
            model_name='fundingsettlement',
            name='chunks',
            field=models.PositiveIntegerField(default=0, help_text="Chunks the payments were booked in (0: one posting, the run's ledger transaction)."),
        ),
        migrations.AlterField(
            model_name='fundingsettlement',
            name='status',
            field=models.CharField(choices=[('PENDING', 'Pending (not settled yet)'), ('SETTLING', 'Settling (booked in chunks; the next run books what is left)'), ('DONE', 'Settled'), ('FAILED', 'Failed (retried by the next run; chunks already booked stay booked)')], default='PENDING', max_length=8),
        ),
        migrations.CreateModel(
            name='FundingChunk',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('number', models.PositiveIntegerField(help_text='0-based; positions in user order.')),
                ('positions', models.PositiveIntegerField()),
                ('paid', models.DecimalField(decimal_places=18, default=0, max_digits=38)),
                ('received', models.DecimalField(decimal_places=18, default=0, max_digits=38)),
                ('covered', models.DecimalField(decimal_places=18, default=0, max_digits=38)),
                ('user_ids', django.contrib.postgres.fields.ArrayField(base_field=models.BigIntegerField(), blank=True, default=list, size=None)),
                ('isolated', django.contrib.postgres.fields.ArrayField(base_field=models.BooleanField(), blank=True, default=list, size=None)),
                ('account_ids', django.contrib.postgres.fields.ArrayField(base_field=models.BigIntegerField(), blank=True, default=list, size=None)),
                ('amounts', django.contrib.postgres.fields.ArrayField(base_field=models.DecimalField(decimal_places=18, max_digits=38), blank=True, default=list, size=None)),
                ('booked_at', models.DateTimeField(blank=True, null=True)),
                ('ledger_transaction', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='ledger.ledgertransaction')),
                ('run', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='chunk_set', to='settlement.fundingsettlement')),
            ],
            options={
                'ordering': ['run_id', 'number'],
                'constraints': [models.UniqueConstraint(fields=('run', 'number'), name='funding_chunk_unique_number')],
            },
        ),
        migrations.RunSQL(
            "ALTER TABLE settlement_fundingchunk ALTER COLUMN user_ids SET STORAGE EXTERNAL, "
            "ALTER COLUMN isolated SET STORAGE EXTERNAL, ALTER COLUMN account_ids SET STORAGE EXTERNAL, "
            "ALTER COLUMN amounts SET STORAGE EXTERNAL",
            migrations.RunSQL.noop,
        ),
    ]
