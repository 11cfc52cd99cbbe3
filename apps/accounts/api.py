"""Base views of the client API: parameters, rate limits, API keys and signed requests.

Every client endpoint subclasses one of three classes (Binance USDⓈ-M security types):

- `PublicApi`  (NONE): no key. Class attribute `weight` (or `get_weight(request)`).
- `KeyedApi`   (USER_STREAM, MARKET_DATA): header `X-MBX-APIKEY`; sets `request.user` to
  the key's user and `request.auth` to the `ApiKey`; checks revocation and IP allow-list.
- `SignedApi`  (TRADE, USER_DATA): also `timestamp`, optional `recvWindow` and an
  HMAC-SHA256 `signature` (hex) over the raw query string followed by the raw body,
  exactly as received, with the `signature` parameter (the last one of the query string,
  or of the body) left out. Class attributes `permission = "read" | "trade"` and
  `counts_as_order`.

Order of work for a request, cheapest first: parse (no I/O) -> the rate limiter, one
Redis round trip that also claims the signature's replay marker (a refused request does
nothing else) -> deferred parse errors -> API key (in-process cache unless the key's
generation, read in that round trip, changed; else one indexed query) -> timestamp ->
signature -> replay -> permission. Views read their parameters
with `request_params(request)`. Every response carries `X-MBX-USED-WEIGHT-1M` (the larger
of the IP's and the key's weight this minute), order endpoints `X-MBX-ORDER-COUNT-1M`,
and 429/418 responses `Retry-After` (seconds).
"""
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.views import APIView

from exchange.errors import ErrorCode, ExchangeError

from . import limits
from .selectors import api_key_cached_user_id, api_key_get_active
from .services import api_key_touch

API_KEY_HEADER = "HTTP_X_MBX_APIKEY"
_API_KEY_RE = re.compile(r"[A-Za-z0-9]{64}")
_SIGNATURE_RE = re.compile(r"[0-9a-fA-F]{64}")
_INTEGER_RE = re.compile(r"[0-9]{1,16}")
_PARAMS_ATTR = "_exchange_params"
_MAX_PARAMS = 100

PERMISSION_READ = "read"
PERMISSION_TRADE = "trade"


def _rejected_key(ip: str | None = None) -> ExchangeError:
    suffix = f", request ip: {ip}" if ip else ""
    return ExchangeError(
        f"Invalid API-key, IP, or permissions for action{suffix}.", code=ErrorCode.REJECTED_MBX_KEY, http_status=401
    )


def _mandatory(name: str) -> ExchangeError:
    return ExchangeError(
        f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
        code=ErrorCode.MANDATORY_PARAM_EMPTY_OR_MALFORMED,
    )


def _django_request(request):
    return getattr(request, "_request", request)


def _raw_body(django_request) -> bytes:
    """The body as received; an empty multipart form (what some HTTP clients and Django's
    test client send for a POST without data) counts as no body at all."""
    try:
        body = django_request.body
    except RequestDataTooBig as exc:
        raise ExchangeError("Request body too large.", code=ErrorCode.TOO_MANY_PARAMETERS, http_status=413) from exc
    if body and django_request.META.get("CONTENT_TYPE", "").startswith("multipart/form-data"):
        try:
            empty_form = not django_request.POST and not django_request.FILES
        except Exception:  # noqa: BLE001 - any unparsable multipart body is simply not empty
            empty_form = False
        if empty_form:
            return b""
    return body


def _pairs(raw: str, where: str) -> list[tuple[str, str]]:
    if not raw:
        return []
    try:
        return parse_qsl(raw, keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=_MAX_PARAMS)
    except UnicodeDecodeError as exc:
        raise ExchangeError(f"Illegal characters found in the {where}.", code=ErrorCode.ILLEGAL_CHARS) from exc
    except ValueError as exc:
        raise ExchangeError(
            f"Malformed {where}: send parameters as name=value pairs in the query string "
            "or form-encoded (application/x-www-form-urlencoded) in the body.",
            code=ErrorCode.MANDATORY_PARAM_EMPTY_OR_MALFORMED,
        ) from exc


def request_params(request) -> dict[str, str]:
    """The request's parameters: the query string and a form-encoded body, merged.

    Works for GET, POST, PUT and DELETE alike (Binance clients put parameters in the
    query string even for POST/DELETE, or in the body, or both). A name given twice,
    within one part or across both, is refused with -1101; a body that is not
    form-encoded (JSON, multipart) with -1102. Values are decoded ('+' is a space).
    Parsed once per request; `timestamp`, `recvWindow` and `signature` are included.
    """
    django_request = _django_request(request)
    cached = getattr(django_request, _PARAMS_ATTR, None)
    if cached is not None:
        return cached
    query = django_request.META.get("QUERY_STRING", "")
    body = _raw_body(django_request)
    try:
        body_text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExchangeError("Illegal characters found in the request body.", code=ErrorCode.ILLEGAL_CHARS) from exc
    params: dict[str, str] = {}
    for name, value in _pairs(query, "query string") + _pairs(body_text, "request body"):
        if name in params:
            raise ExchangeError(
                f"Duplicate values for a parameter detected: '{name}'.", code=ErrorCode.TOO_MANY_PARAMETERS
            )
        params[name] = value
    setattr(django_request, _PARAMS_ATTR, params)
    return params


def client_ip(request) -> str:
    """The client address: settings.API_CLIENT_IP_META (the last hop a trusted proxy added)."""
    meta = _django_request(request).META
    raw = meta.get(settings.API_CLIENT_IP_META) or meta.get("REMOTE_ADDR") or "unknown"
    return raw.rsplit(",", 1)[-1].strip() or "unknown"


@dataclass(frozen=True)
class SignedParts:
    payload: bytes  # raw query string + raw body, signature parameter left out
    signature: str  # lower-case hex
    timestamp: int
    recv_window: int


def _strip_last_signature(raw: bytes) -> tuple[bytes, bytes] | None:
    """(raw without its last parameter, that parameter's value) when it is `signature`."""
    cut = raw.rfind(b"&")
    last = raw[cut + 1:]
    if not last.startswith(b"signature="):
        return None
    return (raw[:cut] if cut >= 0 else b""), last[len(b"signature="):]


def signed_parts(request) -> SignedParts:
    """Timestamp, recvWindow, signature and the exact signed payload (no I/O)."""
    params = request_params(request)
    django_request = _django_request(request)
    query = django_request.META.get("QUERY_STRING", "").encode("utf-8")
    body = _raw_body(django_request)
    if "signature" not in params:
        raise _mandatory("signature")
    stripped = _strip_last_signature(query)
    if stripped is not None:
        query, signature = stripped
    else:
        stripped = _strip_last_signature(body)
        if stripped is None:
            raise ExchangeError(
                "Parameter 'signature' must be the last parameter of the query string or of the body.",
                code=ErrorCode.MANDATORY_PARAM_EMPTY_OR_MALFORMED,
            )
        body, signature = stripped
    signature_text = signature.decode("ascii", "replace")
    if not _SIGNATURE_RE.fullmatch(signature_text):
        raise ExchangeError("Signature for this request is not valid.", code=ErrorCode.INVALID_SIGNATURE)
    timestamp = params.get("timestamp", "")
    if not _INTEGER_RE.fullmatch(timestamp):
        raise _mandatory("timestamp")
    recv_window_text = params.get("recvWindow")
    if recv_window_text is None or recv_window_text == "":
        recv_window = settings.API_RECV_WINDOW_DEFAULT_MS
    elif not _INTEGER_RE.fullmatch(recv_window_text):
        raise _mandatory("recvWindow")
    else:
        recv_window = int(recv_window_text)
    if not 0 < recv_window <= settings.API_RECV_WINDOW_MAX_MS:
        raise ExchangeError(
            f"recvWindow must be greater than 0 and at most {settings.API_RECV_WINDOW_MAX_MS}.",
            code=ErrorCode.BAD_RECV_WINDOW,
        )
    return SignedParts(query + body, signature_text.lower(), int(timestamp), recv_window)


class PublicApi(APIView):
    """A client endpoint that needs no key. Set `weight`, or override `get_weight`."""

    weight: int = 1
    requires_api_key = False
    requires_signature = False
    counts_as_order = False

    authentication_classes: tuple = ()
    permission_classes: tuple = ()
    throttle_classes: tuple = ()

    def get_weight(self, request) -> int:
        return self.weight

    def initial(self, request, *args, **kwargs):
        # Access first: a request the limiter refuses does no other work.
        self.check_access(request)
        super().initial(request, *args, **kwargs)

    def check_access(self, request) -> None:
        now_ms = int(time.time() * 1000)
        ip = client_ip(request)
        deferred: ExchangeError | None = None
        try:
            weight = int(self.get_weight(request))
        except ExchangeError as exc:
            weight, deferred = self.weight, exc

        key = None
        if self.requires_api_key:
            key = _django_request(request).META.get(API_KEY_HEADER, "")
            if not _API_KEY_RE.fullmatch(key):
                key = None
                deferred = deferred or ExchangeError(
                    "API-key format invalid.", code=ErrorCode.BAD_API_KEY_FMT, http_status=401
                )
        signed = None
        if self.requires_signature and deferred is None:
            try:
                signed = signed_parts(request)
            except ExchangeError as exc:
                deferred = exc

        verdict = limits.check(
            now_ms=now_ms,
            ip=ip,
            api_key=key,
            weight=weight,
            is_order=self.counts_as_order and key is not None,
            replay_signature=signed.signature if signed else None,
            # The marker outlives the window in which the timestamp check could pass.
            replay_ttl_ms=(signed.recv_window + settings.API_TIMESTAMP_FUTURE_TOLERANCE_MS + 1000) if signed else 0,
            user_id_hint=api_key_cached_user_id(key) if key and self.counts_as_order else None,
        )
        self._access_verdict = verdict
        self._raise_for_limits(verdict, ip)
        if deferred is not None:
            raise deferred
        if key is None:
            return
        active = api_key_get_active(key=key, generation=verdict.key_generation)
        if active is None or not active.allows_ip(ip):
            raise _rejected_key(ip)
        if signed is not None:
            self._verify_signature(signed, active.secret, now_ms, verdict)
        if getattr(self, "permission", PERMISSION_READ) == PERMISSION_TRADE and not active.api_key.can_trade:
            raise _rejected_key(ip)
        request.user = active.api_key.user
        request.auth = active.api_key
        api_key_touch(api_key=active.api_key)

    def _raise_for_limits(self, verdict: limits.Verdict, ip: str) -> None:
        if verdict.status == limits.BANNED:
            self._retry_after = verdict.retry_after_seconds
            raise ExchangeError(
                f"Way too many requests; banned for {verdict.retry_after_seconds} s. "
                "Back off after a 429 and use the websocket streams for live updates.",
                code=ErrorCode.TOO_MANY_REQUESTS,
                http_status=418,
            )
        if verdict.status == limits.WEIGHT_LIMITED:
            self._retry_after = verdict.retry_after_seconds
            raise ExchangeError(
                "Too many requests; request weight limit of "
                f"{settings.API_IP_WEIGHT_LIMIT_1M} per minute per IP ({ip}) and "
                f"{settings.API_KEY_WEIGHT_LIMIT_1M} per API key exceeded. "
                "Use the websocket streams for live updates to avoid polling.",
                code=ErrorCode.TOO_MANY_REQUESTS,
                http_status=429,
            )
        if verdict.status == limits.ORDER_LIMITED:
            self._retry_after = verdict.retry_after_seconds
            raise ExchangeError(
                f"Too many new orders; current limit is {settings.API_ACCOUNT_ORDER_LIMIT_1M} orders per MINUTE.",
                code=ErrorCode.TOO_MANY_ORDERS,
                http_status=429,
            )

    @staticmethod
    def _verify_signature(signed: SignedParts, secret: bytes, now_ms: int, verdict: limits.Verdict) -> None:
        if signed.timestamp >= now_ms + settings.API_TIMESTAMP_FUTURE_TOLERANCE_MS:
            raise ExchangeError(
                f"Timestamp for this request was {settings.API_TIMESTAMP_FUTURE_TOLERANCE_MS}ms ahead of "
                "the server's time.",
                code=ErrorCode.INVALID_TIMESTAMP,
            )
        if now_ms - signed.timestamp > signed.recv_window:
            raise ExchangeError(
                "Timestamp for this request is outside of the recvWindow.", code=ErrorCode.INVALID_TIMESTAMP
            )
        expected = hmac.new(secret, signed.payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signed.signature):
            raise ExchangeError("Signature for this request is not valid.", code=ErrorCode.INVALID_SIGNATURE)
        if verdict.status == limits.REPLAYED:
            raise ExchangeError(
                "This signature was already used; every signed request needs a fresh timestamp.",
                code=ErrorCode.REPLAYED_SIGNATURE,
            )

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        verdict = getattr(self, "_access_verdict", None)
        if verdict is not None:
            response["X-MBX-USED-WEIGHT-1M"] = str(verdict.used_weight)
            if self.counts_as_order:
                response["X-MBX-ORDER-COUNT-1M"] = str(verdict.order_count)
        retry_after = getattr(self, "_retry_after", None)
        if retry_after is not None:
            response["Retry-After"] = str(retry_after)
        return response


class KeyedApi(PublicApi):
    """Needs a valid, unrevoked API key in X-MBX-APIKEY from an allowed IP (no signature)."""

    requires_api_key = True


class SignedApi(KeyedApi):
    """Also needs timestamp (+ optional recvWindow) and a valid, fresh HMAC-SHA256 signature."""

    requires_signature = True
    permission: str = PERMISSION_READ
    counts_as_order: bool = False
