"""`manage.py evaluate_alerts`: evaluate every alert rule once (what beat does every 15 s)."""
from django.core.management.base import BaseCommand

from apps.ops.alerts import rules_evaluate
from apps.ops.models import Alert, AlertStatus


class Command(BaseCommand):
    help = "Evaluate the enabled alert rules once and list the firing alerts."

    def handle(self, *args, **options):
        result = rules_evaluate()
        self.stdout.write(f"{result.rules} rules evaluated: {result.fired} fired, {result.resolved} resolved, "
                          f"{result.errors} errors")
        for alert in Alert.objects.filter(status=AlertStatus.FIRING).order_by("-fired_at"):
            self.stdout.write(f"FIRING [{alert.level}] {alert.message}")
