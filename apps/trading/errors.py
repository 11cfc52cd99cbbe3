"""Order-entry refusals with their Binance-compatible codes."""
from exchange.errors import ErrorCode, ExchangeError


class OrderRejected(ExchangeError):
    code = ErrorCode.NEW_ORDER_REJECTED


class BadPrecision(ExchangeError):
    code = ErrorCode.BAD_PRECISION


class BadSymbol(ExchangeError):
    code = ErrorCode.BAD_SYMBOL


class MarginInsufficient(ExchangeError):
    code = ErrorCode.MARGIN_NOT_SUFFICIENT


class CancelRejected(ExchangeError):
    code = ErrorCode.CANCEL_REJECTED


class NoSuchOrder(ExchangeError):
    code = ErrorCode.NO_SUCH_ORDER
