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
    UNEXPECTED_RESPONSE = -1006
    TIMEOUT = -1007
    TOO_MANY_ORDERS = -1015
    INVALID_TIMESTAMP = -1021
    INVALID_SIGNATURE = -1022
    # Not a Binance code: a signature seen before inside its window (Binance accepts replays).
    REPLAYED_SIGNATURE = -1099
    # 11xx: request issues
    ILLEGAL_CHARS = -1100
    TOO_MANY_PARAMETERS = -1101
    MANDATORY_PARAM_EMPTY_OR_MALFORMED = -1102
    UNKNOWN_PARAM = -1103
    PARAM_NOT_REQUIRED = -1106
    BAD_PRECISION = -1111
    INVALID_TIF = -1115
    INVALID_ORDER_TYPE = -1116
    INVALID_SIDE = -1117
    BAD_INTERVAL = -1120
    BAD_SYMBOL = -1121
    INVALID_LISTEN_KEY = -1125
    OPTIONAL_PARAMS_BAD_COMBO = -1128
    INVALID_PARAMETER = -1130
    BAD_RECV_WINDOW = -1131
    # 20xx: processing / business rules
    NEW_ORDER_REJECTED = -2010
    CANCEL_REJECTED = -2011
    NO_SUCH_ORDER = -2013
    BAD_API_KEY_FMT = -2014
    REJECTED_MBX_KEY = -2015
    BALANCE_NOT_SUFFICIENT = -2018
    MARGIN_NOT_SUFFICIENT = -2019
    UNABLE_TO_FILL = -2020
    ORDER_WOULD_IMMEDIATELY_TRIGGER = -2021
    REDUCE_ONLY_REJECT = -2022
    USER_IN_LIQUIDATION = -2023
    MAX_OPEN_ORDER_EXCEEDED = -2025
    MAX_LEVERAGE_RATIO = -2027
    MIN_LEVERAGE_RATIO = -2028
    RISK_TOO_HIGH = -2030  # not Binance: the pre-trade risk gate (seed 风险过高)
    # 40xx: filters and parameters
    INVALID_ASSET = -4003
    AMOUNT_MUST_BE_POSITIVE = -4004
    QTY_LESS_THAN_MIN_QTY = -4004  # same number as above: Binance reuses it
    QTY_GREATER_THAN_MAX_QTY = -4005
    PRICE_LESS_THAN_MIN_PRICE = -4013
    DUPLICATE_REQUEST = -4015
    PRICE_HIGHER_THAN_MULTIPLIER_UP = -4016
    PRICE_LOWER_THAN_MULTIPLIER_DOWN = -4024
    INVALID_LEVERAGE = -4028
    MAX_STOP_ORDER_EXCEEDED = -4045
    NO_NEED_TO_CHANGE_MARGIN_TYPE = -4046
    THERE_EXISTS_OPEN_ORDERS = -4047
    THERE_EXISTS_QUANTITY = -4048
    ISOLATED_BALANCE_INSUFFICIENT = -4051
    CLIENT_ORDER_ID_DUPLICATED = -4116
    MARKET_ORDER_PRICE_BAND = -4131
    INVALID_SYMBOL_STATUS = -4140  # opening a position while the symbol is close-only
    MIN_NOTIONAL = -4164
    # 50xx: order book conditions
    GTX_ORDER_REJECT = -5022
    # Binance "Exceed maximum modify order limit."; here also: an order has one modification
    # in flight at a time (a second PUT /fapi/v1/order while the first is still pending).
    MODIFY_ORDER_LIMIT = -5026


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
