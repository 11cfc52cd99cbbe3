"""Autovacuum for the large hot tables at a fixed 10,000 dead rows (apps.ops.maintenance),
and the default rules that say when the server does not vacuum or falls behind.

PostgreSQL's default trigger is 50 rows plus 20% of the table: on ten million orders it
would wait for two million dead rows, while order entry and the matcher slowed down
with every one of them. A fixed threshold keeps each vacuum small whatever the size of
the table. The settings take effect only where the server runs autovacuum.
"""
from django.db import migrations

TABLES = ("trading_order", "trading_ordercommand", "positions_position", "ledger_balance")
SETTINGS = "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000"
RESET = "autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold"


def rules(apps, schema_editor):
    from apps.ops.alert_defaults import rules_seed

    rules_seed(apps.get_model("ops", "AlertRule"))


class Migration(migrations.Migration):
    dependencies = [
        ("ops", "0004_alert_backup_action_permissions"),
        ("trading", "0007_order_resting_reducing"),
        ("positions", "0002_position_updates_hot"),
        ("ledger", "0012_delivery_clearing_account"),
    ]
    operations = [
        migrations.RunSQL(
            [f"ALTER TABLE {table} SET ({SETTINGS})" for table in TABLES],
            [f"ALTER TABLE {table} RESET ({RESET})" for table in TABLES],
        ),
        migrations.RunPython(rules, migrations.RunPython.noop),
    ]
