"""The latency SLA rule (apps.ops.alert_defaults), created once by name like the others."""
from django.db import migrations


def forwards(apps, schema_editor):
    from apps.ops.alert_defaults import rules_seed

    rules_seed(apps.get_model("ops", "AlertRule"))


class Migration(migrations.Migration):
    dependencies = [("ops", "0002_default_alert_rules")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
