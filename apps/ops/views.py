"""Landing page, health endpoints and the staff-only ops dashboard with its JSON feed."""
from django.contrib.admin.views.decorators import staff_member_required
import os

from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from .dashboard import dashboard_feed
from .health import readiness
from .metrics import process_metrics_registry
from .routing import DASHBOARD_WS_PATH
from .selectors import dashboard_summary


def home(request):
    return render(request, "home.html")


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    result = readiness()
    return JsonResponse(result, status=200 if result["ready"] else 503)


@staff_member_required
def dashboard(request):
    context = {**dashboard_summary(), "readiness": readiness(), "title": "Ops dashboard",
               "dashboard_ws_path": DASHBOARD_WS_PATH}
    return render(request, "ops/dashboard.html", context)


@never_cache
def dashboard_data(request):
    """The dashboard's data, polled by its page when the websocket is down; staff only (403 otherwise)."""
    user = request.user
    if not (user.is_active and user.is_staff):
        return JsonResponse({"detail": "staff only"}, status=403)
    return JsonResponse(dashboard_feed())


def metrics(request):
    """Prometheus scrape of the web process: with several workers (scripts/web.py sets
    PROMETHEUS_MULTIPROC_DIR) their counters summed, whichever worker answers."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = process_metrics_registry(multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
