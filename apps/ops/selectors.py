"""Reads for the ops dashboard."""
import json

from django.contrib.auth import get_user_model
from django.db.models import Count, Q, Sum

from apps.contracts.models import Contract
from apps.ledger.selectors import system_balances
from apps.ledger.tasks import LAST_RESULT_KEY
from apps.ops.models import Alert, AlertStatus, Backup, BackupStatus
from exchange.redis import get_redis


def dashboard_summary() -> dict:
    contracts = Contract.objects.annotate(
        long_oi=Sum("positions__size", filter=Q(positions__size__gt=0)),
        open_positions=Count("positions", filter=~Q(positions__size=0)),
    ).order_by("symbol")
    try:
        raw = get_redis().get(LAST_RESULT_KEY)
        last_check = json.loads(raw) if raw else None
    except Exception:
        last_check = None
    return {
        "contracts": contracts,
        "system_balances": system_balances(),
        "user_count": get_user_model().objects.filter(is_staff=False).count(),
        "last_invariant_check": last_check,
        **alerts_panel(),
    }


def alerts_panel() -> dict:
    """Firing alerts (most severe first), how many are pending, and the latest backups."""
    rank = {"CRITICAL": 0, "HIGH": 1, "WARNING": 2, "INFO": 3}
    firing = sorted(
        Alert.objects.filter(status=AlertStatus.FIRING).select_related("acknowledged_by"),
        key=lambda a: (rank[a.level], -a.fired_at.timestamp() if a.fired_at else 0),
    )
    return {
        "firing_alerts": firing,
        "pending_alert_count": Alert.objects.filter(status=AlertStatus.PENDING).count(),
        "last_backup": Backup.objects.order_by("-started_at").first(),
        "last_verified_backup": Backup.objects.filter(status=BackupStatus.SUCCEEDED, verified=True)
        .order_by("-started_at")
        .first(),
    }
