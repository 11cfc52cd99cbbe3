"""How much an order holds: initial margin plus the worst-case (taker) fee.

One rule shared by order entry (the hold) and the matcher (the release), so they agree
to the last unit: hold = round(open_qty × price × contract_size × (initial margin rate +
taker fee rate)) by the ledger's rounding rule. Reduce-only orders hold nothing, as on the
reference exchange: a position can always be closed, even from an empty wallet (an
isolated one's margin comes back in the same booking); the fee is charged at the fill.
The initial margin rate is 1/leverage raised by the contract's risk adjustment
(volatility and liquidity, `apps.risk.services.risk_initial_margin_rate`; none until
the hourly estimate exists).
"""
from decimal import Decimal

from apps.ledger.money import quantize_amount
from apps.risk.services import risk_initial_margin_rate


def order_hold(*, quantity: Decimal, price: Decimal, contract, leverage: int, reduce_only: bool) -> Decimal:
    if reduce_only:
        return Decimal(0)
    rate = contract.taker_fee_rate + risk_initial_margin_rate(contract=contract, leverage=leverage)
    return quantize_amount(quantity * price * contract.contract_size * rate, contract.settle_asset.precision)


def hold_release(*, held: Decimal, open_qty: Decimal, filled_qty: Decimal, precision: int) -> Decimal:
    """The part of a hold released by filling `filled_qty` of `open_qty`; all of it on the last fill."""
    if filled_qty >= open_qty:
        return held
    return min(held, quantize_amount(held * filled_qty / open_qty, precision))
