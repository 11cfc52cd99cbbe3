"""Public market-data endpoints of this app (Binance USDⓈ-M paths): connectivity,
server time, and `premiumIndex` (mark price, index price and funding per symbol)."""
import time

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.api import PublicApi, request_params
from apps.contracts.models import Contract, ContractStatus
from apps.contracts.selectors import contract_get
from apps.settlement.selectors import funding_predicted_many

from .engine.quotes import to_ms
from .selectors import funding_time_next, price_latest_many
from .streams import fmt8

ZERO = "0.00000000"


class PingApi(APIView):
    @extend_schema(responses=inline_serializer("Ping", {}))
    def get(self, request):
        return Response({})


class ServerTimeApi(APIView):
    @extend_schema(responses=inline_serializer("ServerTime", {"serverTime": serializers.IntegerField()}))
    def get(self, request):
        return Response({"serverTime": int(time.time() * 1000)})


class PremiumIndexApi(PublicApi):
    """GET /fapi/v1/premiumIndex: one symbol, or every listed contract (weight 1 / 10).

    `lastFundingRate` is the predicted rate of the current interval (the funding engine's
    `funding_predicted_many`: its cached value, else computed from the interval's premium
    samples so far), `nextFundingTime` the end of that interval, `interestRate` the
    contract's interest component; `estimatedSettlePrice` is the index price for now.
    Delivery contracts do not fund: empty rates and `nextFundingTime` 0, as the reference exchange sends.
    A contract with no published price yet reports zeros with `time` 0.
    """

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "PremiumIndex"  # a unique OpenAPI component name

        symbol = serializers.CharField()
        markPrice = serializers.CharField()  # noqa: N815
        indexPrice = serializers.CharField()  # noqa: N815
        estimatedSettlePrice = serializers.CharField()  # noqa: N815
        lastFundingRate = serializers.CharField()  # noqa: N815
        interestRate = serializers.CharField()  # noqa: N815
        nextFundingTime = serializers.IntegerField()  # noqa: N815
        time = serializers.IntegerField()

    def get_weight(self, request) -> int:
        return 1 if request_params(request).get("symbol") else 10

    @extend_schema(
        tags=["Market data"],
        parameters=[OpenApiParameter("symbol", str, required=False)],
        responses=OutputSerializer(many=True),
        description="Mark price, index price and funding; an object with `symbol`, else a list.",
    )
    def get(self, request):
        symbol = request_params(request).get("symbol") or None
        contracts = Contract.objects.exclude(status__in=(ContractStatus.SETTLED, ContractStatus.PENDING))
        if symbol is not None:
            # -1121 for an unknown symbol, and for one that cannot be a symbol (never queried:
            # PostgreSQL refuses text with NUL bytes).
            contracts = [contract_get(symbol=symbol)]
        else:
            contracts = list(contracts.order_by("symbol"))
        prices = price_latest_many(contracts=contracts)
        now = timezone.now()
        predicted = funding_predicted_many(contracts=contracts, now=now)
        rows = [_row(c, prices.get(c.symbol), now, predicted.get(c.symbol)) for c in contracts]
        return Response(rows[0] if symbol is not None else rows)


def _row(contract: Contract, snapshot, now, predicted=None) -> dict:
    next_funding = funding_time_next(contract=contract, now=now)
    perpetual = contract.is_perpetual
    return {
        "symbol": contract.symbol,
        "markPrice": fmt8(snapshot.mark_price) if snapshot else ZERO,
        "indexPrice": fmt8(snapshot.index_price) if snapshot else ZERO,
        "estimatedSettlePrice": fmt8(snapshot.index_price) if snapshot else ZERO,
        "lastFundingRate": (fmt8(predicted.rate) if predicted is not None else ZERO) if perpetual else "",
        "interestRate": fmt8(contract.interest_rate) if perpetual else "",
        "nextFundingTime": to_ms(next_funding) if next_funding else 0,
        "time": snapshot.at_ms if snapshot else 0,
    }
