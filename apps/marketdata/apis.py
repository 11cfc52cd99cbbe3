"""Public market-data endpoints (Binance USDⓈ-M paths): connectivity and server time."""
import time

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView


class PingApi(APIView):
    @extend_schema(responses=inline_serializer("Ping", {}))
    def get(self, request):
        return Response({})


class ServerTimeApi(APIView):
    @extend_schema(responses=inline_serializer("ServerTime", {"serverTime": serializers.IntegerField()}))
    def get(self, request):
        return Response({"serverTime": int(time.time() * 1000)})
