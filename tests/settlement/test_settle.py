"""Funding settlement with hand-computed numbers: who pays, how much, the dust, the
accounts it moves, the income lines, the history row; idempotency; catch-up; bad inputs."""
import re
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine

from apps.ledger.invariants import LEDGER_CHECKS
from apps.ledger.models import AccountKind, Income, IncomeType, LedgerTransaction, TransactionKind
from apps.ledger.services import Leg, account_get_or_create, ledger_post, system_account
from apps.ops.models import Alert
from apps.settlement import services
from apps.settlement.invariants import check_funding_clearing_is_dust
from apps.settlement.models import FundingRate, FundingSettlement, SettlementStatus
from apps.settlement.selectors import funding_times_due, rate_quote
from apps.settlement.services import FundingError, funding_settle, funding_settle_due

from .conftest import T8

D = Decimal
T0 = T8 - timedelta(hours=8)
T16 = T8 + timedelta(hours=8)
# Every test runs on both ways a settlement locks balances (conftest.lock_path).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("lock_path")]


def clean_invariants():
    return [str(v) for check in (*LEDGER_CHECKS, check_funding_clearing_is_dust) for v in check()]


@pytest.fixture
def three(btcusdt, funded, position):
    """Two longs (alice 0.003, bob 0.007) and one short (carol −0.010), each with 1,000 USDT."""
    users = {name: funded(name, "1000") for name in ("alice", "bob", "carol")}
    position(users["alice"], btcusdt, "0.003")
    position(users["bob"], btcusdt, "0.007")
    position(users["carol"], btcusdt, "-0.010")
    return users


def test_positive_rate_longs_pay_shorts_with_one_unit_of_dust(btcusdt, three, mark, samples, balance, wallet_of):
    # Slots 1..3: (1·0.0001 + 2·0.0002 + 3·(−0.00003)) / 6 = 0.00041 / 6 = 0.000068333333;
    # + interest 0.0001 = 0.000168333333 -> rate 0.00016833 (no previous rate: no EMA).
    samples(btcusdt, T8, ["0.0001", "0.0002", "-0.00003"])
    mark(btcusdt, "50123.7", T8 - timedelta(seconds=1))
    mark(btcusdt, "99999.9", T8)  # at the funding time itself: not used (the last mark BEFORE it is)

    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8 + timedelta(seconds=1))

    # alice: 0.003 × 50123.7 × 0.00016833 = 0.025311967263 -> pays 0.02531197
    # bob:   0.007 × 50123.7 × 0.00016833 = 0.059061256947 -> pays 0.05906126
    # carol: 0.010 × 50123.7 × 0.00016833 = 0.08437322421  -> receives 0.08437322
    # paid 0.08437323 − received 0.08437322 = 0.00000001 of dust, left in FUNDING_CLEARING.
    expected = {"alice": D("-0.02531197"), "bob": D("-0.05906126"), "carol": D("0.08437322")}
    assert run.status == SettlementStatus.DONE
    assert (run.funding_rate, run.mark_price, run.positions) == (D("0.00016833"), D("50123.7"), 3)
    assert (run.paid, run.received, run.dust, run.covered) == (D("0.08437323"), D("0.08437322"), D("1E-8"), 0)
    for name, amount in expected.items():
        assert balance(wallet_of(three[name])) == D("1000") + amount
    assert balance(system_account(AccountKind.FUNDING_CLEARING)) == D("0.00000001")

    incomes = {i.user.username: i for i in Income.objects.filter(income_type=IncomeType.FUNDING_FEE)}
    assert {name: i.amount for name, i in incomes.items()} == expected
    assert {(i.symbol, i.created_at, i.transaction_id) for i in incomes.values()} == {
        ("BTCUSDT", T8, run.ledger_transaction_id)}
    txn = LedgerTransaction.objects.get(pk=run.ledger_transaction_id)
    assert (txn.kind, txn.idempotency_key) == (TransactionKind.FUNDING, f"funding:BTCUSDT:{int(T8.timestamp() * 1000)}")
    assert txn.entries.count() == 4  # three wallets + the clearing account: ONE posting
    history = FundingRate.objects.get()
    assert (history.funding_time, history.funding_rate, history.mark_price, history.samples) == (
        T8, D("0.00016833"), D("50123.7"), 3)
    assert history.premium_index == D("0.000068333333")
    assert clean_invariants() == []


def test_negative_rate_shorts_pay_longs(btcusdt, three, mark, samples, balance, wallet_of):
    # −0.001 + 0.0001 = −0.0009; 0.010 × 50000 × 0.0009 = 0.45 exactly: no dust.
    samples(btcusdt, T8, ["-0.001"])
    mark(btcusdt, "50000", T8 - timedelta(minutes=3))
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    assert run.funding_rate == D("-0.0009")
    assert [balance(wallet_of(three[n])) for n in ("alice", "bob", "carol")] == [
        D("1000.135"), D("1000.315"), D("999.55")]
    assert (run.paid, run.received, run.dust) == (D("0.45"), D("0.45"), 0)
    assert balance(system_account(AccountKind.FUNDING_CLEARING)) == 0
    assert clean_invariants() == []


def test_ema_uses_the_previous_settled_rate(btcusdt, three, mark, samples):
    samples(btcusdt, T8, ["-0.001"])
    mark(btcusdt, "50000", T8 - timedelta(seconds=1))
    funding_settle(contract=btcusdt, funding_time=T8, now=T8)  # −0.0009
    samples(btcusdt, T16, ["0.0003"])
    mark(btcusdt, "50000", T16 - timedelta(seconds=1))
    run = funding_settle(contract=btcusdt, funding_time=T16, now=T16)
    # raw 0.0004; 0.3 × 0.0004 + 0.7 × (−0.0009) = 0.00012 − 0.00063 = −0.00051
    assert run.funding_rate == D("-0.00051")


def test_isolated_positions_pay_from_their_isolated_margin(btcusdt, funded, position, mark, samples, balance,
                                                            wallet_of):
    alice, bob = funded("alice", "1000"), funded("bob", "1000")
    position(alice, btcusdt, "1", isolated=True)
    position(bob, btcusdt, "-1")
    iso = account_get_or_create(kind=AccountKind.ISOLATED_MARGIN, user=alice, contract=btcusdt)
    ledger_post(kind=TransactionKind.TRANSFER, legs=[Leg(wallet_of(alice), "USDT", D("-500")),
                                                       Leg(iso, "USDT", D("500"))])
    mark(btcusdt, "50000", T8 - timedelta(seconds=1))
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)  # interest only: 0.0001 -> 5 USDT
    assert run.funding_rate == D("0.0001")
    assert (balance(iso), balance(wallet_of(alice))) == (D("495"), D("500"))
    assert balance(wallet_of(bob)) == D("1005")
    assert clean_invariants() == []


@pytest.mark.parametrize("chunk", [50_000, 1], ids=["one posting", "in chunks"])
def test_a_payer_short_of_money_is_covered_by_the_fund_then_bad_debt(btcusdt, funded, position, mark, samples,
                                                                       balance, wallet_of, settings, chunk):
    settings.FUNDING_CHUNK_POSITIONS = chunk
    alice, carol = funded("alice", "1000"), funded("carol", "0.2")
    position(alice, btcusdt, "0.010")
    position(carol, btcusdt, "-0.010")
    fund = system_account(AccountKind.INSURANCE_FUND)
    ledger_post(kind=TransactionKind.INSURANCE, legs=[Leg(system_account(AccountKind.EXTERNAL), "USDT", D("-0.1")),
                                                        Leg(fund, "USDT", D("0.1"))])
    samples(btcusdt, T8, ["-0.001"])  # −0.0009: carol owes 0.45 but holds 0.2
    mark(btcusdt, "50000", T8 - timedelta(seconds=1))
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    assert balance(wallet_of(carol)) == 0
    assert balance(wallet_of(alice)) == D("1000.45")
    assert balance(fund) == 0  # 0.1 covered by the fund …
    assert balance(system_account(AccountKind.BAD_DEBT)) == D("-0.15")  # … the rest is bad debt
    assert run.covered == D("0.25")
    if chunk == 1:  # carol's chunk recorded its cover
        assert run.chunks == 2 and sum(c.covered for c in run.chunk_set.all()) == D("0.25")
    assert Income.objects.get(user=carol, income_type=IncomeType.FUNDING_FEE).amount == D("-0.45")  # the fee as charged
    assert clean_invariants() == []


def test_no_positions_still_publishes_the_rate(btcusdt, mark):
    mark(btcusdt, "50000", T8 - timedelta(seconds=1))
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    assert (run.status, run.positions, run.ledger_transaction_id) == (SettlementStatus.DONE, 0, None)
    assert FundingRate.objects.get().funding_rate == D("0.0001")


# -- idempotency ---------------------------------------------------------------------------------


def test_a_second_run_changes_nothing(btcusdt, three, mark, samples, balance, wallet_of):
    samples(btcusdt, T8, ["0.0002"])
    mark(btcusdt, "50123.7", T8 - timedelta(seconds=1))
    first = funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    before = [balance(wallet_of(u)) for u in three.values()]
    second = funding_settle(contract=btcusdt, funding_time=T8, now=T8 + timedelta(hours=1))
    assert second.pk == first.pk and second.ledger_transaction_id == first.ledger_transaction_id
    assert [balance(wallet_of(u)) for u in three.values()] == before
    assert Income.objects.count() == 3 + 3  # three deposits, three funding lines
    assert LedgerTransaction.objects.filter(kind=TransactionKind.FUNDING).count() == 1
    assert funding_settle_due(now=T8 + timedelta(minutes=5)) == []


def test_a_failure_half_way_books_nothing_and_the_rerun_charges_once(btcusdt, three, mark, samples, balance,
                                                                    wallet_of, monkeypatch):
    samples(btcusdt, T8, ["0.0002"])
    mark(btcusdt, "50123.7", T8 - timedelta(seconds=1))
    original = services._incomes_insert

    def book_then_crash(**kwargs):
        original(**kwargs)  # the posting and the positions' lines are written, the history and the run not yet
        raise RuntimeError("worker lost")

    monkeypatch.setattr(services, "_incomes_insert", book_then_crash)
    with pytest.raises(RuntimeError):
        funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    run = FundingSettlement.objects.get()
    assert (run.status, run.attempts, "worker lost" in run.error) == (SettlementStatus.FAILED, 1, True)
    assert [balance(wallet_of(u)) for u in three.values()] == [D("1000")] * 3
    assert not Income.objects.filter(income_type=IncomeType.FUNDING_FEE).exists()
    assert not FundingRate.objects.exists()
    alert = Alert.objects.get(dedup_key="job_failure:funding:BTCUSDT")
    assert alert.level == "CRITICAL"

    monkeypatch.setattr(services, "_incomes_insert", original)
    (again,) = funding_settle_due(now=T8 + timedelta(minutes=1))
    assert (again.pk, again.status, again.attempts) == (run.pk, SettlementStatus.DONE, 2)
    assert Income.objects.filter(income_type=IncomeType.FUNDING_FEE).count() == 3
    assert clean_invariants() == []


# -- schedule ------------------------------------------------------------------------------------


def test_due_times_wait_for_the_funding_time_and_catch_up_missed_ones(btcusdt, three, mark, samples):
    btcusdt.onboard_time = T0 - timedelta(hours=3)
    btcusdt.save(update_fields=["onboard_time"])
    samples(btcusdt, T0, ["0.001"])      # 0.0011 (the first rate: no EMA)
    samples(btcusdt, T8, ["-0.001"])     # raw −0.0009; 0.3·(−0.0009) + 0.7·0.0011 = 0.0005
    samples(btcusdt, T16, ["0.0002"])    # raw 0.0003; 0.3·0.0003 + 0.7·0.0005 = 0.00044
    for t in (T0, T8, T16):
        mark(btcusdt, "50000", t - timedelta(seconds=1))
    with time_machine.travel(T0 - timedelta(seconds=1), tick=False):
        assert funding_settle_due() == []
    with time_machine.travel(T0 + timedelta(seconds=2), tick=False):
        assert [r.funding_time for r in funding_settle_due()] == [T0]
    # The scheduler is down for 08:00; it comes back at 16:00:30 and settles both, in order.
    with time_machine.travel(T16 + timedelta(seconds=30), tick=False):
        assert funding_times_due(contract=btcusdt, now=T16 + timedelta(seconds=30)) == [T8, T16]
        runs = funding_settle_due()
    assert [(r.funding_time, r.funding_rate) for r in runs] == [(T8, D("0.0005")), (T16, D("0.00044"))]
    assert list(FundingRate.objects.order_by("funding_time").values_list("funding_rate", flat=True)) == [
        D("0.0011"), D("0.0005"), D("0.00044")]
    assert Income.objects.filter(income_type=IncomeType.FUNDING_FEE).count() == 9
    assert clean_invariants() == []


def test_a_later_time_is_refused_while_an_earlier_one_is_unsettled(btcusdt, three, mark):
    """Ops settling 16:00 by hand while the scheduler missed 08:00: refused, else 08:00 would never
    be settled (the beat goes on from the last time settled); the beat then settles both in order."""
    btcusdt.onboard_time = T0 - timedelta(hours=3)
    btcusdt.save(update_fields=["onboard_time"])
    for t in (T0, T8, T16):
        mark(btcusdt, "50000", t - timedelta(seconds=1))
    funding_settle(contract=btcusdt, funding_time=T0, now=T0)
    with pytest.raises(FundingError, match=re.escape(f"Funding time {T8.isoformat()} of BTCUSDT is not settled yet")):
        funding_settle(contract=btcusdt, funding_time=T16, now=T16 + timedelta(minutes=5))
    assert not FundingSettlement.objects.filter(funding_time=T16).exists()
    assert [r.funding_time for r in funding_settle_due(now=T16 + timedelta(minutes=6))] == [T8, T16]
    assert clean_invariants() == []


def test_rate_quote_reads_only_its_interval(btcusdt, samples):
    samples(btcusdt, T8, ["0.004"])
    samples(btcusdt, T16, ["0.0001", "0.0002"])
    q = rate_quote(contract=btcusdt, funding_time=T16)
    # (0.0001 + 2·0.0002) / 3 = 0.000166666667 + 0.0001 -> 0.00026667
    assert (q.samples, q.premium_index, q.rate) == (2, D("0.000166666667"), D("0.00026667"))


# -- bad inputs ------------------------------------------------------------------------------------


def test_bad_inputs_are_refused(btcusdt, quarterly, mark):
    mark(btcusdt, "50000", T8 - timedelta(seconds=1))
    with pytest.raises(FundingError, match="not a perpetual"):
        funding_settle(contract=quarterly, funding_time=T8, now=T8)
    with pytest.raises(FundingError, match="not a funding time"):
        funding_settle(contract=btcusdt, funding_time=T8 + timedelta(hours=1), now=T16)
    with pytest.raises(FundingError, match="not a funding time"):
        funding_settle(contract=btcusdt, funding_time=T8 + timedelta(milliseconds=1), now=T16)
    with pytest.raises(FundingError, match="not a funding time"):
        funding_settle(contract=btcusdt, funding_time=T8.replace(tzinfo=None), now=T16)
    with pytest.raises(FundingError, match="has not come yet"):
        funding_settle(contract=btcusdt, funding_time=T16, now=T8 + timedelta(hours=1))
    assert not FundingSettlement.objects.exists()


def test_no_mark_price_fails_with_an_alert_and_books_nothing(btcusdt, three):
    with pytest.raises(FundingError, match="No mark price"):
        funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    run = FundingSettlement.objects.get()
    assert run.status == SettlementStatus.FAILED
    assert Alert.objects.filter(dedup_key="job_failure:funding:BTCUSDT").exists()
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.FUNDING).exists()


def test_a_custom_interval_funds_on_its_own_grid(btcusdt, mark):
    btcusdt.funding_interval_hours = 4
    btcusdt.save(update_fields=["funding_interval_hours"])
    t4 = T0 + timedelta(hours=4)
    mark(btcusdt, "50000", t4 - timedelta(seconds=1))
    assert funding_settle(contract=btcusdt, funding_time=t4, now=t4).status == SettlementStatus.DONE
    assert funding_times_due(contract=btcusdt, now=T8 + timedelta(minutes=1)) == [T8]  # 04:00 is settled


def test_the_income_trigger_trusts_only_the_settlement_statement(btcusdt, three, mark, samples):
    """The funding's income lines take their users from positions, so their trigger skips the
    per-line user probe for that statement only (ledger migration 0011): a line of an unknown
    user written after it in the same transaction is still refused."""
    from django.db import IntegrityError, connection, transaction

    samples(btcusdt, T8, ["0.0001"])
    mark(btcusdt, "50000", T8 - timedelta(seconds=1))
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('ledger.income_users_from_positions', true)")
        assert cursor.fetchone()[0] in ("", None)
    line = Income.objects.filter(income_type=IncomeType.FUNDING_FEE).first()
    with pytest.raises(IntegrityError, match="unknown user"):
        with transaction.atomic():
            Income.objects.create(user_id=line.user_id + 10_000, symbol="BTCUSDT", income_type=IncomeType.FUNDING_FEE,
                                  amount=D("1"), asset_id=line.asset_id, transaction_id=run.ledger_transaction_id,
                                  created_at=T8, info="")
    assert clean_invariants() == []
