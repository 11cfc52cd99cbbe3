"""A booking takes every balance its posting touches in its one sorted lock.

Delivery and ADL lock all their balances (system accounts included) in one pass in the
ledger's order. A matcher batch that locked only some first (wallets, the fund) and the
rest (fee income, PnL clearing, order margin) at its posting would hold the fund while
waiting for fee income that a delivery holds while waiting for the fund: a deadlock.
"""
from decimal import Decimal

from apps.ledger.models import AccountKind
from apps.ledger.services import account_get_or_create, system_account, wallet_deposit
from apps.positions import booking
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.services import order_place

D = Decimal


def test_a_matcher_batch_posts_only_to_balances_it_locked_first(make_user, usdt, btcusdt, monkeypatch):
    alice, bob = make_user("alice"), make_user("bob")
    for user in (alice, bob):
        wallet_deposit(user=user, asset=usdt, amount=D("100000"))
    calls = []  # per booking: (accounts locked, accounts posted to)
    lock, post = booking.balances_lock, booking.ledger_post_many

    def balances_lock(*, account_ids, asset):
        calls.append((set(account_ids), set()))
        return lock(account_ids=account_ids, asset=asset)

    def ledger_post_many(*, postings, **options):
        calls[-1][1].update(leg.account_id for p in postings for leg in p.legs)
        return post(postings=postings, **options)

    monkeypatch.setattr(booking, "balances_lock", balances_lock)
    monkeypatch.setattr(booking, "ledger_post_many", ledger_post_many)
    engine = SymbolEngine(btcusdt)
    for price, close in ((D("50000"), False), (D("51000"), True)):  # open, then close with a PnL
        order_place(user=bob, contract=btcusdt, side="SELL" if not close else "BUY", quantity=D("0.1"), price=price)
        order_place(user=alice, contract=btcusdt, side="BUY" if not close else "SELL", quantity=D("0.1"),
                    price=price)
        batch_process(engine)

    posted = set().union(*(p for _, p in calls))
    # Fee income and the order margin released are among what is posted ...
    order_margin = account_get_or_create(kind=AccountKind.ORDER_MARGIN, user=alice).pk
    assert {system_account(AccountKind.FEE_INCOME).pk, order_margin} <= posted
    # ... and no posting reaches a balance its booking did not lock before deciding anything.
    assert [p - locked for locked, p in calls] == [set()] * len(calls)
