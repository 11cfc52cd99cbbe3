"""How much an order holds: initial margin plus the worst-case (taker) fee.

One rule shared by order entry (the hold) and the matcher (the release), so they agree
to the last unit: hold = round(open_qty × price × contract_size × (initial margin rate +
taker fee rate)) by the ledger's rounding rule; reduce-only orders hold only the fee.
The initial margin rate is 1/leverage raised by the contract's risk adjustment
(volatility and liquidity, `apps.risk.services.risk_initial_margin_rate`; none until
the hourly estimate exists).
"""
from decimal import Decimal

from apps.ledger.money import quantize_amount
from apps.risk.services import risk_initial_margin_rate


def order_hold(*, quantity: Decimal, price: Decimal, contract, leverage: int, reduce_only: bool) -> Decimal:
    notional = quantity * price * contract.contract_size
    rate = contract.taker_fee_rate
    if not reduce_only:
        rate += risk_initial_margin_rate(contract=contract, leverage=leverage)
    return quantize_amount(notional * rate, contract.settle_asset.precision)


def hold_release(*, held: Decimal, open_qty: Decimal, filled_qty: Decimal, precision: int) -> Decimal:
    """The part of a hold released by filling `filled_qty` of `open_qty`; all of it on the last fill."""
    if filled_qty >= open_qty:
        return held
    return min(held, quantize_amount(held * filled_qty / open_qty, precision))
