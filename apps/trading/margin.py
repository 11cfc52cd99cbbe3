"""How much an order holds: initial margin plus the worst-case (taker) fee.

One rule shared by order entry (the hold) and the matcher (the release), so they agree
to the last unit: hold = round(open_qty × price × contract_size × (1/leverage + taker
fee rate)) by the ledger's rounding rule; reduce-only orders hold only the fee.
"""
from decimal import Decimal

from apps.ledger.money import quantize_amount


def order_hold(*, quantity: Decimal, price: Decimal, contract, leverage: int, reduce_only: bool) -> Decimal:
    notional = quantity * price * contract.contract_size
    rate = contract.taker_fee_rate if reduce_only else Decimal(1) / Decimal(leverage) + contract.taker_fee_rate
    return quantize_amount(notional * rate, contract.settle_asset.precision)


def hold_release(*, held: Decimal, open_qty: Decimal, filled_qty: Decimal, precision: int) -> Decimal:
    """The part of a hold released by filling `filled_qty` of `open_qty`; all of it on the last fill."""
    if filled_qty >= open_qty:
        return held
    return min(held, quantize_amount(held * filled_qty / open_qty, precision))
