"""The one application error type and the numbered codes clients see.

Codes follow Binance USDⓈ-M Futures where a matching code exists (so client libraries
map them), grouped by subsystem; `exchange.api.exception_handler` turns an
`ExchangeError` into `{"code": ..., "msg": ...}` with the HTTP status given here.
"""
from enum import IntEnum


class ErrorCode(IntEnum):
    # 10xx: general / server
    UNKNOWN = -1000
    DISCONNECTED = -1001
    UNAUTHORIZED = -1002
    TOO_MANY_REQUESTS = -1003
    # 11xx: request issues
    ILLEGAL_CHARS = -1100
    TOO_MANY_PARAMETERS = -1101
    MANDATORY_PARAM_EMPTY_OR_MALFORMED = -1102
    UNKNOWN_PARAM = -1103
    BAD_PRECISION = -1111
    INVALID_PARAMETER = -1130
    BAD_SYMBOL = -1121
    # 20xx: processing / business rules
    NEW_ORDER_REJECTED = -2010
    CANCEL_REJECTED = -2011
    NO_SUCH_ORDER = -2013
    BALANCE_NOT_SUFFICIENT = -2018
    MARGIN_NOT_SUFFICIENT = -2019
    REDUCE_ONLY_REJECT = -2022
    # 40xx: filters and parameters
    INVALID_ASSET = -4003
    AMOUNT_MUST_BE_POSITIVE = -4004
    DUPLICATE_REQUEST = -4015
    CLIENT_ORDER_ID_DUPLICATED = -4116


class ExchangeError(Exception):
    """A refused request or operation: a stable code, a message, an HTTP status."""

    code: ErrorCode = ErrorCode.UNKNOWN
    http_status: int = 400

    def __init__(self, msg: str, *, code: ErrorCode | None = None, http_status: int | None = None):
        super().__init__(msg)
        self.msg = msg
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status

    def as_body(self) -> dict:
        return {"code": int(self.code), "msg": self.msg}
