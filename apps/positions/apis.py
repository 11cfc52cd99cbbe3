"""Signed account and position endpoints (Binance USDⓈ-M paths and response fields).

`account`, `balance` and `positionRisk` are served at both /fapi/v2/ and /fapi/v3/
(client libraries use either); v3 `positionRisk` lists only open positions, v2 every
position row. Decimals go out as strings, times as int milliseconds.
"""
from decimal import Decimal

from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from apps.accounts.api import PERMISSION_TRADE, SignedApi, request_params
from apps.ledger.models import IncomeType
from apps.ledger.selectors import incomes_of_user
from apps.liquidation.selectors import adl_quantiles
from apps.trading.apis import SIGNED, SYMBOL, _ms, _s
from apps.trading.selectors import ms_to_datetime
from exchange import params as p

from .models import MarginType
from .selectors import AccountOverview, PositionView, account_overview
from .services import leverage_change, margin_type_change, max_notional_for_leverage, position_margin_adjust
from .tiers import contract_tiers

MARGIN_TYPES = {"ISOLATED": MarginType.ISOLATED, "CROSSED": MarginType.CROSS, "CROSS": MarginType.CROSS}


def _strings(*names: str) -> dict:
    return {name: serializers.CharField() for name in names}


class PositionOut(serializers.Serializer):
    """A position as `positionRisk` and `account` report it (the union of the v2 and v3 fields)."""

    locals().update(_strings(
        "symbol", "positionSide", "positionAmt", "entryPrice", "breakEvenPrice", "markPrice", "unRealizedProfit",
        "unrealizedProfit", "liquidationPrice", "leverage", "maxNotionalValue", "maxNotional", "marginType",
        "isAutoAddMargin", "isolatedMargin", "isolatedWallet", "notional", "marginAsset", "initialMargin",
        "maintMargin", "positionInitialMargin", "openOrderInitialMargin", "bidNotional", "askNotional"))
    isolated = serializers.BooleanField()
    adl = serializers.IntegerField()
    updateTime = serializers.IntegerField()


class AssetOut(serializers.Serializer):
    locals().update(_strings(
        "asset", "walletBalance", "unrealizedProfit", "marginBalance", "maintMargin", "initialMargin",
        "positionInitialMargin", "openOrderInitialMargin", "crossWalletBalance", "crossUnPnl", "availableBalance",
        "maxWithdrawAmount"))
    marginAvailable = serializers.BooleanField()
    updateTime = serializers.IntegerField()


class BalanceOut(AssetOut):
    accountAlias = serializers.CharField()
    balance = serializers.CharField()


class AccountOut(serializers.Serializer):
    locals().update(_strings(
        "totalInitialMargin", "totalMaintMargin", "totalWalletBalance", "totalUnrealizedProfit",
        "totalMarginBalance", "totalPositionInitialMargin", "totalOpenOrderInitialMargin",
        "totalCrossWalletBalance", "totalCrossUnPnl", "availableBalance", "maxWithdrawAmount"))
    feeTier = serializers.IntegerField()
    feeBurn = serializers.BooleanField()
    canTrade = serializers.BooleanField()
    canDeposit = serializers.BooleanField()
    canWithdraw = serializers.BooleanField()
    updateTime = serializers.IntegerField()
    multiAssetsMargin = serializers.BooleanField()
    tradeGroupId = serializers.IntegerField()
    assets = AssetOut(many=True)
    positions = PositionOut(many=True)


class IncomeOut(serializers.Serializer):
    locals().update(_strings("symbol", "incomeType", "income", "asset", "info", "tradeId"))
    time = serializers.IntegerField()
    tranId = serializers.IntegerField()


class BracketOut(serializers.Serializer):
    bracket = serializers.IntegerField()
    initialLeverage = serializers.IntegerField()
    notionalCap = serializers.FloatField()
    notionalFloor = serializers.FloatField()
    maintMarginRatio = serializers.FloatField()
    cum = serializers.FloatField()


class SymbolBracketsOut(serializers.Serializer):
    symbol = serializers.CharField()
    brackets = BracketOut(many=True)


SUCCESS = inline_serializer("Success", {"code": serializers.IntegerField(), "msg": serializers.CharField()})
POSITION_MARGIN = inline_serializer("PositionMarginResult", {
    "code": serializers.IntegerField(), "msg": serializers.CharField(), "amount": serializers.FloatField(),
    "type": serializers.IntegerField()})


def _ok(extra: dict | None = None) -> dict:
    return {"code": 200, "msg": "success", **(extra or {})}


class LeverageApi(SignedApi):
    """POST /fapi/v1/leverage."""

    permission = PERMISSION_TRADE

    @extend_schema(parameters=SIGNED + [SYMBOL, OpenApiParameter("leverage", int, required=True)], request=None,
                   responses=inline_serializer("Leverage", {"leverage": serializers.IntegerField(),
                                                            "maxNotionalValue": serializers.CharField(),
                                                            "symbol": serializers.CharField()}))
    def post(self, request):
        params = request_params(request)
        contract = p.contract(params)
        leverage = p.integer(params, "leverage")
        if leverage is None:
            raise p.missing("leverage")
        position = leverage_change(user=request.user, contract=contract, leverage=leverage)
        return Response({"leverage": position.leverage, "symbol": contract.symbol,
                         "maxNotionalValue": _s(max_notional_for_leverage(contract, position.leverage))})


class MarginTypeApi(SignedApi):
    """POST /fapi/v1/marginType (ISOLATED or CROSSED)."""

    permission = PERMISSION_TRADE

    @extend_schema(parameters=SIGNED + [SYMBOL, OpenApiParameter("marginType", str, enum=["ISOLATED", "CROSSED"],
                                                                 required=True)],
                   request=None, responses=SUCCESS)
    def post(self, request):
        params = request_params(request)
        contract = p.contract(params)
        margin_type = MARGIN_TYPES.get(p.required(params, "marginType").upper())
        if margin_type is None:
            raise p.invalid("marginType", params.get("marginType"))
        margin_type_change(user=request.user, contract=contract, margin_type=margin_type)
        return Response(_ok())


class PositionMarginApi(SignedApi):
    """POST /fapi/v1/positionMargin: type 1 adds isolated margin, 2 removes it."""

    permission = PERMISSION_TRADE

    @extend_schema(parameters=SIGNED + [SYMBOL, OpenApiParameter("amount", str, required=True),
                                        OpenApiParameter("type", int, enum=[1, 2], required=True),
                                        OpenApiParameter("positionSide", str)],
                   request=None, responses=POSITION_MARGIN)
    def post(self, request):
        params = request_params(request)
        contract = p.contract(params)
        amount = p.decimal(params, "amount")
        direction = p.integer(params, "type")
        if amount is None:
            raise p.missing("amount")
        if direction is None:
            raise p.missing("type")
        moved = position_margin_adjust(user=request.user, contract=contract, amount=amount, direction=direction)
        return Response(_ok({"amount": float(moved), "type": direction,
                             "msg": "Successfully modify position margin."}))


def _brackets(contract) -> dict:
    return {"symbol": contract.symbol, "brackets": [
        {"bracket": t.bracket, "initialLeverage": t.max_leverage, "notionalCap": float(t.notional_cap),
         "notionalFloor": float(t.notional_floor), "maintMarginRatio": float(t.maintenance_rate),
         "cum": float(t.maintenance_amount)}
        for t in contract_tiers(contract)
    ]}


class LeverageBracketApi(SignedApi):
    """GET /fapi/v1/leverageBracket: one object for a symbol, else a list (numbers, as the reference sends)."""

    @extend_schema(parameters=SIGNED + [OpenApiParameter("symbol", str)],
                   responses=PolymorphicProxySerializer("LeverageBrackets", serializers=[
                       SymbolBracketsOut, SymbolBracketsOut(many=True)], resource_type_field_name=None, many=False))
    def get(self, request):
        from apps.contracts.models import Contract, ContractStatus

        contract = p.contract(request_params(request), required_=False)
        if contract is not None:
            return Response(_brackets(contract))
        listed = Contract.objects.exclude(status__in=(ContractStatus.PENDING, ContractStatus.SETTLED))
        return Response([_brackets(c) for c in listed.order_by("symbol")])


def _position_fields(view: PositionView, adl: dict[str, int] | None = None) -> dict:
    position, risk, contract = view.position, view.risk, view.contract
    isolated = view.is_isolated
    return {
        "symbol": contract.symbol,
        "positionSide": "BOTH",
        "positionAmt": _s(position.size),
        "entryPrice": _s(position.entry_price),
        "breakEvenPrice": _s(position.entry_price),
        "markPrice": _s(view.mark),
        "unRealizedProfit": _s(risk.unrealized_pnl),
        "unrealizedProfit": _s(risk.unrealized_pnl),
        "liquidationPrice": _s(view.liquidation_price),
        "leverage": str(position.leverage),
        "maxNotionalValue": _s(max_notional_for_leverage(contract, position.leverage)),
        "maxNotional": _s(max_notional_for_leverage(contract, position.leverage)),
        "marginType": "isolated" if isolated else "cross",
        "isolated": isolated,
        "isAutoAddMargin": "false",
        "isolatedMargin": _s(view.isolated_margin + risk.unrealized_pnl if isolated else Decimal(0)),
        "isolatedWallet": _s(view.isolated_margin if isolated else Decimal(0)),
        "notional": _s(risk.notional),
        "marginAsset": contract.settle_asset.code,
        "initialMargin": _s(risk.initial_margin + view.open_order_margin),
        "maintMargin": _s(risk.maintenance_margin),
        "positionInitialMargin": _s(risk.initial_margin),
        "openOrderInitialMargin": _s(view.open_order_margin),
        "adl": (adl or {}).get(contract.symbol, 0),
        "bidNotional": "0",
        "askNotional": "0",
        "updateTime": _ms(position.updated_at),
    }


def _asset_fields(asset) -> dict:
    return {
        "asset": asset.asset.code,
        "walletBalance": _s(asset.wallet_balance),
        "unrealizedProfit": _s(asset.unrealized),
        "marginBalance": _s(asset.margin_balance),
        "maintMargin": _s(asset.maintenance),
        "initialMargin": _s(asset.cross_initial + asset.isolated_initial + asset.order_margin),
        "positionInitialMargin": _s(asset.cross_initial + asset.isolated_initial),
        "openOrderInitialMargin": _s(asset.order_margin),
        "crossWalletBalance": _s(asset.cross_wallet),
        "crossUnPnl": _s(asset.cross_unrealized),
        "availableBalance": _s(asset.available),
        "maxWithdrawAmount": _s(asset.max_withdraw),
        "marginAvailable": True,
        "updateTime": _ms(asset.updated_at),
    }


def _totals(overview: AccountOverview) -> dict:
    fields = ("walletBalance", "unrealizedProfit", "marginBalance", "maintMargin", "initialMargin",
              "positionInitialMargin", "openOrderInitialMargin", "crossWalletBalance", "crossUnPnl",
              "availableBalance", "maxWithdrawAmount")
    # Single-asset margin: the totals are those of the settle asset (USDT).
    main = overview.asset("USDT")
    values = _asset_fields(main) if main else {f: "0" for f in fields}
    return {
        "totalInitialMargin": values["initialMargin"], "totalMaintMargin": values["maintMargin"],
        "totalWalletBalance": values["walletBalance"], "totalUnrealizedProfit": values["unrealizedProfit"],
        "totalMarginBalance": values["marginBalance"], "totalPositionInitialMargin": values["positionInitialMargin"],
        "totalOpenOrderInitialMargin": values["openOrderInitialMargin"],
        "totalCrossWalletBalance": values["crossWalletBalance"], "totalCrossUnPnl": values["crossUnPnl"],
        "availableBalance": values["availableBalance"], "maxWithdrawAmount": values["maxWithdrawAmount"],
    }


class AccountApi(SignedApi):
    """GET /fapi/v2/account and /fapi/v3/account."""

    weight = 5

    @extend_schema(parameters=SIGNED, responses=AccountOut)
    def get(self, request):
        overview = account_overview(user=request.user)
        adl = adl_quantiles(user=request.user)
        return Response({
            "feeTier": 0, "feeBurn": False, "canTrade": True, "canDeposit": True, "canWithdraw": True,
            "updateTime": 0, "multiAssetsMargin": False, "tradeGroupId": -1,
            **_totals(overview),
            "assets": [_asset_fields(a) for a in overview.assets.values()],
            "positions": [_position_fields(v, adl) for v in overview.positions],
        })


class BalanceApi(SignedApi):
    """GET /fapi/v2/balance and /fapi/v3/balance."""

    weight = 5

    @extend_schema(parameters=SIGNED, responses=BalanceOut(many=True))
    def get(self, request):
        overview = account_overview(user=request.user)
        alias = f"u{request.user.pk}"
        return Response([
            {"accountAlias": alias, "balance": fields["walletBalance"], **fields}
            for fields in (_asset_fields(a) for a in overview.assets.values())
        ])


class PositionRiskApi(SignedApi):
    """GET /fapi/v2/positionRisk (every position row) and /fapi/v3/positionRisk (open ones)."""

    weight = 5
    only_open = False

    @extend_schema(parameters=SIGNED + [OpenApiParameter("symbol", str)], responses=PositionOut(many=True))
    def get(self, request):
        contract = p.contract(request_params(request), required_=False)
        views = account_overview(user=request.user).positions
        if contract is not None:
            views = [v for v in views if v.contract.pk == contract.pk]
        if self.only_open:
            views = [v for v in views if v.position.size or v.open_order_margin]
        adl = adl_quantiles(user=request.user)
        return Response([_position_fields(v, adl) for v in views])


class IncomeApi(SignedApi):
    """GET /fapi/v1/income: the user's transfers, fees, realized PnL, funding, oldest first."""

    weight = 30

    @extend_schema(parameters=SIGNED + [OpenApiParameter("symbol", str),
                                        OpenApiParameter("incomeType", str, enum=IncomeType.values),
                                        OpenApiParameter("startTime", int), OpenApiParameter("endTime", int),
                                        OpenApiParameter("page", int), OpenApiParameter("limit", int)],
                   responses=IncomeOut(many=True))
    def get(self, request):
        params = request_params(request)
        symbol = p.optional(params, "symbol")
        start, end = p.time_range(params)
        picked = incomes_of_user(
            user=request.user, symbol=p.contract(params).symbol if symbol is not None else None,
            income_type=p.choice(params, "incomeType", IncomeType.values),
            start=ms_to_datetime(start) if start is not None else None,
            end=ms_to_datetime(end) if end is not None else None,
            limit=p.integer(params, "limit", default=100, low=1, high=1000),
            page=p.integer(params, "page", default=1, low=1, high=10_000),
        )
        return Response([
            {"symbol": row.symbol, "incomeType": row.income_type, "income": _s(row.amount),
             "asset": row.asset.code, "info": row.info or row.income_type, "time": _ms(row.created_at),
             "tranId": row.transaction_id, "tradeId": str(row.trade_id) if row.trade_id else ""}
            for row in picked
        ])

