"""Public funding endpoints (Binance USDⓈ-M paths): `GET /fapi/v1/fundingRate` (the
settled rate history) and `GET /fapi/v1/fundingInfo` (cap, floor and interval per
perpetual). Rates and mark prices go out as strings with 8 decimals, times in ms."""
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from apps.accounts.api import PublicApi, request_params
from apps.marketdata.engine.quotes import to_ms
from apps.marketdata.streams import fmt8
from exchange import params as p

from .selectors import funding_contracts, funding_rate_history

_TAG = "Market data"
HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX = 100, 1000


class FundingRateHistoryApi(PublicApi):
    """GET /fapi/v1/fundingRate: settled rates, oldest first.

    Without startTime/endTime the most recent `limit` rows; with startTime the first
    `limit` rows from it; `symbol` omitted means every symbol.
    """

    weight = 1

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "FundingRateHistory"  # a unique OpenAPI component name

        symbol = serializers.CharField()
        fundingRate = serializers.CharField()  # noqa: N815
        fundingTime = serializers.IntegerField()  # noqa: N815
        markPrice = serializers.CharField()  # noqa: N815

    @extend_schema(
        tags=[_TAG],
        parameters=[
            OpenApiParameter("symbol", str, required=False),
            OpenApiParameter("startTime", int, required=False, description="Epoch ms, inclusive."),
            OpenApiParameter("endTime", int, required=False, description="Epoch ms, inclusive."),
            OpenApiParameter("limit", int, required=False, description="Default 100, max 1000."),
        ],
        responses=OutputSerializer(many=True),
    )
    def get(self, request):
        params = request_params(request)
        contract = p.contract(params, required_=False)
        start, end = p.time_range(params)
        limit = p.integer(params, "limit", default=HISTORY_LIMIT_DEFAULT, low=1, high=HISTORY_LIMIT_MAX)
        rows = funding_rate_history(contract=contract, start_ms=start, end_ms=end, limit=limit)
        return Response([
            {"symbol": r.contract.symbol, "fundingRate": fmt8(r.funding_rate), "fundingTime": to_ms(r.funding_time),
             "markPrice": fmt8(r.mark_price)}
            for r in rows
        ])


class FundingInfoApi(PublicApi):
    """GET /fapi/v1/fundingInfo: cap, floor and interval of every funding perpetual."""

    weight = 1

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "FundingInfo"  # a unique OpenAPI component name

        symbol = serializers.CharField()
        adjustedFundingRateCap = serializers.CharField()  # noqa: N815
        adjustedFundingRateFloor = serializers.CharField()  # noqa: N815
        fundingIntervalHours = serializers.IntegerField()  # noqa: N815
        disclaimer = serializers.BooleanField()

    @extend_schema(tags=[_TAG], responses=OutputSerializer(many=True))
    def get(self, request):
        return Response([
            {"symbol": c.symbol, "adjustedFundingRateCap": fmt8(c.funding_rate_cap),
             "adjustedFundingRateFloor": fmt8(c.funding_rate_floor),
             "fundingIntervalHours": c.funding_interval_hours, "disclaimer": False}
            for c in funding_contracts()
        ])
