from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "apps.ops"
    label = "ops"
    verbose_name = "Operations"

    def ready(self):
        from . import celery_metrics, metrics

        metrics.install()  # system and database collectors, GC timer
        celery_metrics.connect()  # exporters of Celery worker and beat, task counters
