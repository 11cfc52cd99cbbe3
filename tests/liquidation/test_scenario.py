"""Scenario: 1,000 leveraged longs (cross and isolated, 2–6×) against ten shorts, the mark
falls 30% in six steps while a liquidity provider keeps a thin bid under the mark.

After every step, with the sweep, the matcher and the advances run until no liquidation is
active: exactly the accounts whose margin ratio reached 100% (computed here by hand from
their deposit, size and leverage) have been liquidated, none is left frozen, and nobody
still holding a position is at or below 100% (a liquidation may stop once a partial fill
in the book restores the ratio); the insurance fund moved by exactly what the liquidation
records say (clearance fees and isolated surpluses in, gap cover out), bad debt equals the
recorded bad debt, and every invariant holds (ledger, long OI = short OI, order margin). The gaps the thin book cannot
absorb go to the market while the fund can pay and are auto-deleveraged when it cannot.
"""
import os
import random
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Sum

from apps.ledger.models import AccountKind, TransactionKind
from apps.ledger.money import quantize_amount
from apps.ledger.services import Leg, accounts_for_users, ledger_post, system_account
from apps.liquidation.models import Liquidation, LiquidationRecord, LiquidationStatus, RecordKind
from apps.liquidation.screen import ScreenBook, latest_marks
from apps.liquidation.selectors import margin_statuses
from apps.liquidation.services import liquidation_sweep, liquidations_advance
from apps.ops.invariants import run_all_invariants
from apps.positions.booking import Fill, fills_book
from apps.positions.models import MarginType, Position
from apps.positions.services import leverage_change, margin_type_change
from apps.trading.matching import batch_process
from apps.trading.services import order_place

from .helpers import bad_debt, fund

D = Decimal
pytestmark = pytest.mark.slow
User = get_user_model()

ACCOUNTS = int(os.environ.get("SCENARIO_ACCOUNTS", 1000))  # fewer for a quick local run
ENTRY = D("50000")
MARKS = [D("47500"), D("45000"), D("42500"), D("40000"), D("37500"), D("35000")]  # −30% in six steps
MMR = D("0.004")  # tier 1: every long is under 50,000 notional
TAKER = D("0.0004")


def _threshold(backing: Decimal, size: Decimal) -> Decimal:
    """The highest mark at which backing + (mark − entry) × size ≤ MMR × mark × size (ratio ≤ 100%)."""
    return (ENTRY * size - backing) / (size * (1 - MMR))


@pytest.fixture
def book(usdt, btcusdt, mark):
    """The 1,000 longs, opened against ten shorts through the booking service the matcher uses
    (one batch: taker fees on the longs, maker fees on the shorts, isolated margins moved), and a
    liquidity provider."""
    rng = random.Random(8)
    mark(str(ENTRY))
    users = User.objects.bulk_create([User(username=f"long{i:04d}") for i in range(ACCOUNTS)]
                                     + [User(username=f"short{i}") for i in range(10)] + [User(username="lp")])
    shorts, lp = users[ACCOUNTS:-1], users[-1]
    deposits, longs, fills = {s.pk: D("10000000") for s in shorts}, [], []
    deposits[lp.pk] = D("100000000")
    for i, user in enumerate(users[:ACCOUNTS]):
        size = D(rng.randint(1, 9)) / 10
        leverage = rng.randint(2, 6)
        isolated = i % 3 == 0
        margin = quantize_amount(size * ENTRY / leverage, 8)
        # Cross: the leverage is the deposit's (plus up to as much again in spare collateral).
        extra = D(0) if isolated else quantize_amount(margin * D(rng.randint(0, 100)) / 100, 8)
        deposits[user.pk] = margin + size * ENTRY * TAKER + extra
        if isolated:
            margin_type_change(user=user, contract=btcusdt, margin_type=MarginType.ISOLATED)
            leverage_change(user=user, contract=btcusdt, leverage=leverage)
        # What backs the position after the opening fill (the taker fee paid from the wallet).
        longs.append((user, size, _threshold(margin + extra, size)))
        fills.append(Fill(taker_user_id=user.pk, maker_user_id=shorts[i % 10].pk, taker_is_buyer=True, price=ENTRY,
                          quantity=size))
    wallets = accounts_for_users(kind=AccountKind.WALLET, user_ids=deposits)
    ledger_post(kind=TransactionKind.DEPOSIT, memo="scenario deposits",
                legs=[*(Leg(wallets[u], usdt, amount) for u, amount in deposits.items()),
                      Leg(system_account(AccountKind.EXTERNAL), usdt, -sum(deposits.values()))])
    fills_book(contract=btcusdt, fills=fills, releases={}, reference={"scenario": "open"})
    assert Position.objects.filter(user__username__startswith="long", size__gt=0).count() == ACCOUNTS
    assert run_all_invariants() == []
    return longs, lp


def _drain(engine) -> None:
    """Matcher batches and liquidation steps until no liquidation is active."""
    for _ in range(100_000):
        batch_process(engine)
        if not Liquidation.objects.filter(status=LiquidationStatus.ACTIVE).exists():
            return
        liquidations_advance()
    raise AssertionError("liquidations did not finish")


def test_mark_falls_30_percent_in_steps(book, btcusdt, engine, mark, settings):
    settings.RISK_PRETRADE_ENABLED = False  # the liquidity provider's bids; not what this is about
    longs, lp = book
    fund_before, bad_before = fund(), bad_debt()
    lowest = ENTRY
    for price in MARKS:
        # A thin bid under the new mark (3 BTC at −1% and −3% per 1,000 accounts): some
        # liquidations fill in the book, the rest gap.
        for depth in (D("0.99"), D("0.97")):
            order_place(user=lp, contract=btcusdt, side="BUY", quantity=D(3 * ACCOUNTS) / 1000,
                        price=(price * depth).quantize(D("0.1")))
        batch_process(engine)
        mark(str(price))
        lowest = min(lowest, price)
        liquidation_sweep()
        _drain(engine)
        # Nothing left at or below 100% (a liquidation stops once a partial fill in the book
        # restores the ratio): the screen's candidates all judge above it exactly.
        screen = ScreenBook.load()
        hits = screen.screen(latest_marks(screen.contract_ids), ratio=1.0)
        for user_id, _ in hits.cross + hits.isolated:
            assert all(s.ratio is None or s.ratio > 1 for s in margin_statuses(user=User.objects.get(pk=user_id)))
        expected = {user.pk for user, _, threshold in longs if lowest <= threshold}
        liquidated = set(Liquidation.objects.values_list("user_id", flat=True))
        assert liquidated == expected, f"at {price}: {len(liquidated ^ expected)} accounts differ"
        assert run_all_invariants() == []

    kinds = set(LiquidationRecord.objects.values_list("kind", flat=True))
    assert {RecordKind.EXECUTION, RecordKind.DELEVERAGE, RecordKind.ADL} <= kinds  # book, fund and ADL all used
    money = LiquidationRecord.objects.filter(
        kind__in=(RecordKind.EXECUTION, RecordKind.DELEVERAGE, RecordKind.ADL)).aggregate(
        fee=Sum("clearance_fee"), surplus=Sum("surplus_to_fund"), cover=Sum("fund_cover"), bad=Sum("bad_debt"))
    assert fund() - fund_before == money["fee"] + money["surplus"] - money["cover"]
    assert bad_before - bad_debt() == money["bad"]
    survivors = [user for user, _, threshold in longs if lowest > threshold]
    assert 0 < len(survivors) < ACCOUNTS
