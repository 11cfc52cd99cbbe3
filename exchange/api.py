"""DRF glue shared by every API: the exception handler that gives `{code, msg}`.

Every error leaves with a JSON body carrying both `code` and `msg` and a 4xx/5xx
status; nothing unexpected reaches the client as an HTML 500.
"""
import logging

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from exchange.errors import ErrorCode, ExchangeError

logger = logging.getLogger(__name__)


def exception_handler(exc, context):
    if isinstance(exc, ExchangeError):
        return Response(exc.as_body(), status=exc.http_status)
    if isinstance(exc, Http404):
        return Response({"code": int(ErrorCode.INVALID_PARAMETER), "msg": "Not found."}, status=404)
    if isinstance(exc, (PermissionDenied, drf_exceptions.PermissionDenied)):
        return Response({"code": int(ErrorCode.UNAUTHORIZED), "msg": "Permission denied."}, status=403)
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        return Response({"code": int(ErrorCode.UNAUTHORIZED), "msg": str(exc.detail)}, status=401)
    if isinstance(exc, drf_exceptions.Throttled):
        return Response({"code": int(ErrorCode.TOO_MANY_REQUESTS), "msg": str(exc.detail)}, status=429)
    if isinstance(exc, drf_exceptions.ValidationError):
        return Response(
            {"code": int(ErrorCode.MANDATORY_PARAM_EMPTY_OR_MALFORMED), "msg": _flatten(exc.detail)},
            status=400,
        )
    if isinstance(exc, drf_exceptions.APIException):
        return Response({"code": int(ErrorCode.UNKNOWN), "msg": str(exc.detail)}, status=exc.status_code)
    logger.exception("unhandled error in %s", context.get("view"))
    return Response({"code": int(ErrorCode.UNKNOWN), "msg": "Internal error; please retry."}, status=500)


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten(item) for item in detail)
    return str(detail)
