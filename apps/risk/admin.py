"""Risk results in the admin: snapshots per account (filter by level, link to the user),
runs, per-contract volatility and margin adjustments, and the exchange-wide overview
(HTML at risk/risksnapshot/overview/, JSON at .../overview.json, staff only).

Everything here is computed by the jobs, so it is read-only.
"""
import json

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from apps.ledger.admin import ReadOnlyAdmin

from .models import RiskLevelChoice, RiskRun, RiskSnapshot, VolatilityEstimate
from .selectors import risk_overview

LEVEL_COLOURS = {0: "#2e7d32", 1: "#f9a825", 2: "#ef6c00", 3: "#c62828"}


def _user_link(user):
    url = reverse(f"admin:{user._meta.app_label}_{user._meta.model_name}_change", args=[user.pk])
    return format_html('<a href="{}">{}</a>', url, user)


def overview_payload(limit: int = 20) -> dict:
    """The JSON the staff endpoint serves (also handy for the ops dashboard)."""
    o = risk_overview(limit=limit)
    return {
        "run": None if o.run is None else {
            "bucket": o.run.bucket.isoformat(), "status": o.run.status, "accounts": o.run.accounts,
            "startedAt": o.run.started_at.isoformat(),
            "finishedAt": o.run.finished_at.isoformat() if o.run.finished_at else None,
        },
        "accounts": o.accounts,
        "totalVar95": str(o.total_var_95),
        "totalVar99": str(o.total_var_99),
        "totalGrossNotional": str(o.total_gross_notional),
        "byLevel": o.by_level,
        "top": [
            {"userId": s.user_id, "username": s.user.get_username(), "level": s.get_level_display().upper(),
             "score": s.overall_score, "equity": str(s.equity), "grossNotional": str(s.gross_notional),
             "var95": str(s.var_95), "var99": str(s.var_99), "stressLoss": str(s.stress_loss),
             "worstScenario": s.worst_scenario, "concentration": s.concentration}
            for s in o.top
        ],
        "volatilityFallback": [v.contract.symbol for v in o.stale_volatility],
    }


@admin.register(RiskSnapshot)
class RiskSnapshotAdmin(ReadOnlyAdmin):
    list_display = ("bucket", "user_link", "level_badge", "score", "equity", "gross_notional", "var_95", "var_99",
                    "stress_loss", "worst_scenario", "concentration_fmt")
    list_filter = ("level", "bucket", "worst_scenario")
    search_fields = ("user__username", "user__email")
    date_hierarchy = "bucket"
    list_select_related = ("user",)
    ordering = ("-bucket", "-overall_score")
    change_list_template = "risk/snapshot_change_list.html"
    fieldsets = (
        (None, {"fields": ("user_link", "bucket", "computed_at", "run", "level_badge", "score")}),
        ("Exposure", {"fields": ("equity", "gross_notional", "net_notional", "concentration_fmt", "positions_table")}),
        ("Value at risk (one day)", {"fields": ("var_95", "var_99", "es_95", "es_99", "hist_var_95", "hist_var_99",
                                               "paths", "var_95_ratio", "var_99_ratio")}),
        ("Stress", {"fields": ("stress_table", "stress_loss", "worst_scenario", "stress_loss_ratio")}),
        ("Score", {"fields": ("components_table", "recommendations_list")}),
        ("Inputs", {"classes": ("collapse",), "fields": ("inputs_pretty",)}),
    )
    readonly_fields = ("user_link", "level_badge", "score", "concentration_fmt", "positions_table", "stress_table",
                       "components_table", "recommendations_list", "inputs_pretty")

    @admin.display(description="user", ordering="user__username")
    def user_link(self, obj):
        return _user_link(obj.user)

    @admin.display(description="level", ordering="level")
    def level_badge(self, obj):
        return format_html('<b style="color:{}">{}</b>', LEVEL_COLOURS.get(obj.level, "#000"),
                           obj.get_level_display().upper())

    @admin.display(description="score", ordering="overall_score")
    def score(self, obj):
        return f"{obj.overall_score:.1f}"

    @admin.display(description="concentration", ordering="concentration")
    def concentration_fmt(self, obj):
        return f"{obj.concentration:.2f}"

    @admin.display(description="positions")
    def positions_table(self, obj):
        rows = obj.inputs.get("positions", [])
        if not rows:
            return "—"
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (r["symbol"], r["size"], r["mark"], r["notional"], r.get("leverage", "")) for r in rows))
        return format_html("<table><tr><th>symbol</th><th>size</th><th>mark</th><th>notional</th>"
                           "<th>leverage</th></tr>{}</table>", body)

    @admin.display(description="scenarios")
    def stress_table(self, obj):
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td style='text-align:right'>{}</td></tr>", (
            (s["name"], s["kind"], f"{s['pnl']:,.2f}") for s in obj.stress))
        return format_html("<table><tr><th>scenario</th><th>kind</th><th>P&amp;L</th></tr>{}</table>", body)

    @admin.display(description="components (0–100)")
    def components_table(self, obj):
        return format_html_join(", ", "{} {}", ((k, f"{v:.1f}") for k, v in obj.components.items()))

    @admin.display(description="recommendations")
    def recommendations_list(self, obj):
        if not obj.recommendations:
            return "—"
        return format_html("<ul>{}</ul>", format_html_join("", "<li><b>{}</b>: {}</li>", (
            (r["code"], r["message"]) for r in obj.recommendations)))

    @admin.display(description="inputs")
    def inputs_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.inputs, indent=2, sort_keys=True))

    def _check_view_permission(self, request) -> None:
        # admin_view only checks is_staff: the overview names accounts with their equity and VaR.
        if not self.has_view_permission(request):
            raise PermissionDenied

    def get_urls(self):
        return [
            path("overview/", self.admin_site.admin_view(self.overview_view), name="risk_overview"),
            path("overview.json", self.admin_site.admin_view(self.overview_json), name="risk_overview_json"),
        ] + super().get_urls()

    def overview_view(self, request):
        self._check_view_permission(request)
        context = {**self.admin_site.each_context(request), "title": "Risk overview",
                   "overview": risk_overview(limit=20), "levels": RiskLevelChoice, "opts": self.model._meta}
        return TemplateResponse(request, "risk/overview.html", context)

    def overview_json(self, request):
        self._check_view_permission(request)
        return JsonResponse(overview_payload())


@admin.register(RiskRun)
class RiskRunAdmin(ReadOnlyAdmin):
    list_display = ("bucket", "status", "accounts", "chunks", "chunks_done", "total_var_95", "total_var_99",
                    "duration", "error_short")
    list_filter = ("status",)
    date_hierarchy = "bucket"
    exclude = ("history",)

    @admin.display(description="duration")
    def duration(self, obj):
        if obj.finished_at is None:
            return "—"
        return f"{(obj.finished_at - obj.started_at).total_seconds():.1f} s"

    @admin.display(description="error")
    def error_short(self, obj):
        return obj.error[:80]


@admin.register(VolatilityEstimate)
class VolatilityEstimateAdmin(ReadOnlyAdmin):
    list_display = ("contract", "bucket", "method", "fallback", "realized_fmt", "forecast_fmt", "daily_24h_fmt",
                    "liquidity_fmt", "initial_margin_factor", "maintenance_addon", "observations")
    list_filter = ("contract", "method", "fallback")
    date_hierarchy = "bucket"
    list_select_related = ("contract",)

    @admin.display(description="realized (ann.)", ordering="realized_volatility")
    def realized_fmt(self, obj):
        return f"{obj.realized_volatility:.1%}"

    @admin.display(description="1-day forecast", ordering="forecast_daily_volatility")
    def forecast_fmt(self, obj):
        return f"{obj.forecast_daily_volatility:.2%}"

    @admin.display(description="24 h daily (margin)", ordering="daily_volatility_24h")
    def daily_24h_fmt(self, obj):
        return f"{obj.daily_volatility_24h:.2%}"

    @admin.display(description="liquidity", ordering="liquidity_score")
    def liquidity_fmt(self, obj):
        return f"{obj.liquidity_score:.2f}"
