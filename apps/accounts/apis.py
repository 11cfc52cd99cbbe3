"""User data stream listen keys: POST/PUT/DELETE /fapi/v1/listenKey (USER_STREAM, weight 1)."""
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from .api import KeyedApi, request_params
from .services import listen_key_close, listen_key_keepalive, listen_key_start

_LISTEN_KEY = inline_serializer("ListenKey", {"listenKey": serializers.CharField()})
_EMPTY = inline_serializer("Empty", {})
_KEY_PARAM = OpenApiParameter(
    "listenKey", str, required=False, description="Optional; when given it must be the user's active key."
)
_API_KEY_HEADER = OpenApiParameter("X-MBX-APIKEY", str, location=OpenApiParameter.HEADER, required=True)


class ListenKeyApi(KeyedApi):
    weight = 1

    @extend_schema(parameters=[_API_KEY_HEADER], request=None, responses=_LISTEN_KEY)
    def post(self, request):
        """Start a user data stream: the active listen key (extended to 60 minutes), or a new one."""
        return Response({"listenKey": listen_key_start(user=request.user)})

    @extend_schema(parameters=[_API_KEY_HEADER, _KEY_PARAM], request=None, responses=_LISTEN_KEY)
    def put(self, request):
        """Keep the stream alive for another 60 minutes; -1125 when the key is unknown or expired."""
        listen_key = listen_key_keepalive(user=request.user, listen_key=request_params(request).get("listenKey"))
        return Response({"listenKey": listen_key})

    @extend_schema(parameters=[_API_KEY_HEADER, _KEY_PARAM], request=None, responses={200: _EMPTY})
    def delete(self, request):
        """Close the user data stream."""
        listen_key_close(user=request.user, listen_key=request_params(request).get("listenKey"))
        return Response({})
