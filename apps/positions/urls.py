"""Signed account and position endpoints, mounted under /fapi/ (v2 and v3 for the account family)."""
from django.urls import path

from . import apis

urlpatterns = [
    path("v1/leverage", apis.LeverageApi.as_view(), name="fapi-leverage"),
    path("v1/marginType", apis.MarginTypeApi.as_view(), name="fapi-margin-type"),
    path("v1/positionMargin", apis.PositionMarginApi.as_view(), name="fapi-position-margin"),
    path("v1/leverageBracket", apis.LeverageBracketApi.as_view(), name="fapi-leverage-bracket"),
    path("v1/income", apis.IncomeApi.as_view(), name="fapi-income"),
]
for version in ("v2", "v3"):
    urlpatterns += [
        path(f"{version}/account", apis.AccountApi.as_view(), name=f"fapi-{version}-account"),
        path(f"{version}/balance", apis.BalanceApi.as_view(), name=f"fapi-{version}-balance"),
        path(f"{version}/positionRisk", apis.PositionRiskApi.as_view(only_open=version == "v3"),
             name=f"fapi-{version}-position-risk"),
    ]
