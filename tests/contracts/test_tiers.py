"""Maintenance margin tiers: the published brackets, progressive sum == one-line formula."""
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from hypothesis import given
from hypothesis import strategies as st

from apps.contracts.calendar import delivery_symbol, last_friday, quarterly_expiries_after
from apps.contracts.models import Contract, ContractType
from apps.contracts.services import contract_create, tiers_from_brackets
from apps.contracts.tiers import (
    maintenance_margin,
    maintenance_margin_progressive,
    max_leverage_for_notional,
    tier_specs_from_rows,
    tiers_validate,
)
from apps.ops.demo import BTC_BRACKETS, ETH_BRACKETS
from exchange.errors import ExchangeError

D = Decimal
BTC_TIERS = tiers_from_brackets(BTC_BRACKETS)


def test_btc_cum_amounts_match_the_published_table():
    # Design section 4a: cum column of the BTCUSDT brackets.
    assert [t.maintenance_amount for t in BTC_TIERS] == [
        D(0), D(50), D(1300), D(46300), D(546300), D(2546300), D(5046300), D(8046300), D(28046300), D(103046300)
    ]
    assert tiers_validate(BTC_TIERS) == []
    assert tiers_validate(tiers_from_brackets(ETH_BRACKETS)) == []


@pytest.mark.parametrize(
    "notional, margin, leverage",
    [
        (D("10000"), D("40"), 125),  # 10k × 0.4%
        (D("50000"), D("200"), 100),  # 50k × 0.5% − 50
        (D("100000"), D("450"), 100),  # 100k × 0.5% − 50
        (D("1000000"), D("8700"), 50),  # 1M × 1% − 1,300
        (D("600000000"), D("196953700"), 1),  # beyond the last cap: last bracket
    ],
)
def test_maintenance_margin_hand_examples(notional, margin, leverage):
    assert maintenance_margin(BTC_TIERS, notional) == margin
    assert maintenance_margin_progressive(BTC_TIERS, notional) == margin
    assert max_leverage_for_notional(BTC_TIERS, notional) == leverage


@given(st.integers(min_value=0, max_value=700_000_000_00).map(lambda cents: D(cents) / 100))
def test_progressive_sum_equals_formula(notional):
    assert maintenance_margin(BTC_TIERS, notional) == maintenance_margin_progressive(BTC_TIERS, notional)
    assert maintenance_margin(BTC_TIERS, -notional) == maintenance_margin(BTC_TIERS, notional)


def test_validation_names_the_problems():
    broken = list(BTC_TIERS)
    broken[2] = broken[2].__class__(**{**broken[2].__dict__, "maintenance_amount": D("1")})
    broken[3] = broken[3].__class__(**{**broken[3].__dict__, "max_leverage": 200})
    problems = tiers_validate(broken)
    assert any("tier 3 maintenance amount must be 1300" in p for p in problems)
    assert any("tier 4 may not allow more leverage" in p for p in problems)
    assert tiers_validate([]) == ["a contract needs at least one margin tier"]


def test_contract_create_refuses_bad_tiers_and_creates_nothing(usdt, btc):
    bad = list(BTC_TIERS)
    bad[1] = bad[1].__class__(**{**bad[1].__dict__, "notional_floor": D("40000")})
    with pytest.raises(ExchangeError, match="Invalid margin tiers"):
        contract_create(tiers=bad, symbol="BTCUSDT", contract_type=ContractType.PERPETUAL,
                        base_asset=btc, quote_asset=usdt, settle_asset=usdt)
    assert not Contract.objects.exists()


def test_tiers_round_trip_through_the_database(btcusdt):
    assert tier_specs_from_rows(btcusdt.margin_tiers.all()) == BTC_TIERS


@pytest.mark.parametrize(
    "overrides, constraint",
    [
        ({"tick_size": D("0")}, "contract_tick_positive"),
        ({"min_qty": D("0.0001")}, "contract_min_qty_ge_lot"),
        ({"taker_fee_rate": D("-0.001")}, "contract_taker_fee_range"),
        ({"funding_rate_cap": D("-0.01")}, "contract_funding_bounds"),
        ({"contract_type": ContractType.DELIVERY}, "contract_delivery_time_iff_delivery"),
        ({"symbol": "btc-usdt"}, "contract_symbol_format"),
        ({"max_leverage": 0}, "contract_leverage_range"),
    ],
)
def test_database_refuses_inconsistent_contracts(usdt, btc, overrides, constraint):
    fields = dict(symbol="ETHUSDT", contract_type=ContractType.PERPETUAL, base_asset=btc, quote_asset=usdt,
                  settle_asset=usdt)
    fields.update(overrides)
    with pytest.raises(IntegrityError, match=constraint):
        with transaction.atomic():
            Contract.objects.create(**fields)


def test_quarterly_calendar():
    assert last_friday(2026, 12) == datetime(2026, 12, 25, 8, 0, tzinfo=timezone.utc)
    assert last_friday(2027, 3) == datetime(2027, 3, 26, 8, 0, tzinfo=timezone.utc)
    moment = datetime(2026, 12, 25, 8, 0, tzinfo=timezone.utc)  # exactly at an expiry: the next ones
    assert quarterly_expiries_after(moment) == [last_friday(2027, 3), last_friday(2027, 6)]
    assert delivery_symbol("BTCUSDT", last_friday(2027, 3)) == "BTCUSDT_270326"
