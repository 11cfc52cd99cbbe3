"""Reads for the ops dashboard."""
import json

from django.contrib.auth import get_user_model
from django.db.models import Count, Q, Sum

from apps.contracts.models import Contract
from apps.ledger.selectors import system_balances
from apps.ledger.tasks import LAST_RESULT_KEY
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
    }
