"""Property: whatever the fills, the books agree with the cash the account exchanged.

For a random sequence of fills of one account against a counterparty (buys and sells,
opening, adding, reducing, closing and flipping) booked through the real fill-booking
service, and a random mark price at the end:

    realized PnL + unrealized PnL at the mark = −Σ signed qty × price + size × mark

(the cash paid for what was bought and received for what was sold, plus what the
position is worth), the wallet (and isolated margin) moved by exactly realized PnL
minus fees, and every ledger invariant holds. Realized PnL is rounded per fill by the
ledger's rule, so the identity holds to half a unit of the asset's precision per fill.
"""
from decimal import Decimal

from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.ledger.models import AccountKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import account_get_or_create, wallet_deposit
from apps.ops.invariants import run_all_invariants
from apps.positions.booking import Fill, fills_book
from apps.positions.models import MarginType, Position

D = Decimal
prices = st.integers(min_value=400_000, max_value=600_000).map(lambda ticks: D(ticks) / 10)  # 40,000-60,000
quantities = st.integers(min_value=1, max_value=2_000).map(lambda lots: D(lots) / 1000)
fill = st.tuples(st.booleans(), quantities, prices, st.booleans())  # (account buys?, qty, price, account is taker?)


class Rollback(Exception):
    pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fills=st.lists(fill, min_size=1, max_size=12), mark=prices, isolated=st.booleans(),
       leverage=st.sampled_from([1, 5, 20, 50]))
def test_pnl_and_fees_account_for_the_cash_exchanged(fills, mark, isolated, leverage, make_user, usdt, btcusdt):
    try:
        with transaction.atomic():
            account, other = make_user("acct"), make_user("other")
            for user in (account, other):
                wallet_deposit(user=user, asset=usdt, amount=D("10000000"))
            Position.objects.create(user=account, contract=btcusdt, leverage=leverage,
                                    margin_type=MarginType.ISOLATED if isolated else MarginType.CROSS)
            wallet = account_get_or_create(kind=AccountKind.WALLET, user=account)
            iso = account_get_or_create(kind=AccountKind.ISOLATED_MARGIN, user=account, contract=btcusdt)

            cash = D(0)
            fees = D(0)
            realized = D(0)
            for buys, qty, price, taker in fills:
                booked = fills_book(
                    contract=btcusdt, releases={}, reference={"test": True},
                    fills=[Fill(taker_user_id=(account if taker else other).pk,
                                maker_user_id=(other if taker else account).pk,
                                taker_is_buyer=buys == taker, price=price, quantity=qty)],
                ).fills[0]
                cash -= (qty if buys else -qty) * price
                fees += booked.taker_fee if taker else booked.maker_fee
                realized += booked.taker_realized_pnl if taker else booked.maker_realized_pnl
                assert run_all_invariants() == []

            position = Position.objects.get(user=account, contract=btcusdt)
            unrealized = (mark - position.entry_price) * position.size
            tolerance = D("0.000000005") * len(fills) + abs(position.size) * D("1e-18") * 10
            assert abs((realized + unrealized) - (cash + position.size * mark)) <= tolerance
            assert position.realized_pnl == realized
            held = balance_amount(account=wallet, asset_code="USDT") + balance_amount(account=iso, asset_code="USDT")
            assert held == D("10000000") + realized - fees
            if not isolated or position.size == 0:
                assert balance_amount(account=iso, asset_code="USDT") == 0
            raise Rollback
    except Rollback:
        pass
