"""Test-only endpoints built on the base classes (mounted by tests/accounts/urls.py)."""
from rest_framework.response import Response

from apps.accounts.api import KeyedApi, PublicApi, SignedApi, request_params


class EchoPublicApi(PublicApi):
    weight = 2

    def get(self, request):
        return Response({"params": request_params(request)})


class DepthLikeApi(PublicApi):
    def get_weight(self, request) -> int:
        limit = int(request_params(request).get("limit", "100"))
        return 2 if limit <= 100 else 10

    def get(self, request):
        return Response({})


class EchoKeyedApi(KeyedApi):
    def get(self, request):
        return Response({"user": request.user.username, "key_id": request.auth.pk})


class AccountReadApi(SignedApi):
    weight = 5

    def get(self, request):
        return Response({"user": request.user.username, "params": request_params(request)})

    post = get
    delete = get


class OrderApi(SignedApi):
    permission = "trade"
    counts_as_order = True

    def post(self, request):
        return Response({"user": request.user.username, "params": request_params(request)})

    delete = post
