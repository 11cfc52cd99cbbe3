"""Landing page, health endpoints and the staff-only ops dashboard."""
from django.contrib.admin.views.decorators import staff_member_required
from django.http import JsonResponse
from django.shortcuts import render

from .health import readiness
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
    context = {**dashboard_summary(), "readiness": readiness(), "title": "Ops dashboard"}
    return render(request, "ops/dashboard.html", context)
