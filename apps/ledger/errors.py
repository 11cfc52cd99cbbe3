"""Ledger refusals, each with the client-facing code of `exchange.errors`."""
from exchange.errors import ErrorCode, ExchangeError


class LedgerError(ExchangeError):
    code = ErrorCode.INVALID_PARAMETER


class InvalidAmount(LedgerError):
    code = ErrorCode.AMOUNT_MUST_BE_POSITIVE


class PrecisionExceeded(LedgerError):
    code = ErrorCode.BAD_PRECISION


class UnknownAsset(LedgerError):
    code = ErrorCode.INVALID_ASSET


class Unbalanced(LedgerError):
    code = ErrorCode.INVALID_PARAMETER


class InsufficientBalance(LedgerError):
    code = ErrorCode.BALANCE_NOT_SUFFICIENT
