"""The funding formulas with hand-checked numbers; the payment as PostgreSQL runs it, against the formula."""
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.settlement import formulas as f

D = Decimal
CAP, FLOOR, I = D("0.0075"), D("-0.0075"), D("0.0001")


def test_seed_premium_is_contract_minus_mark_over_mark():
    assert f.premium_seed(contract_price=D("50100"), mark_price=D("50000")) == D("0.002")
    assert f.premium_seed(contract_price=D("49950"), mark_price=D("50000")) == D("-0.001")
    # 1/3 of a basis point rounds to 12 places, half even.
    assert f.premium_seed(contract_price=D("30000.01"), mark_price=D("30000")) == D("0.000000333333")
    with pytest.raises(ValueError):
        f.premium_seed(contract_price=D("1"), mark_price=D("0"))


def test_weighted_mean_weights_later_slots_more():
    # (1·0.001 + 2·0.002 + 3·0.004) / (1 + 2 + 3) = 0.017 / 6 = 0.0028333…
    assert f.weighted_mean([(1, D("0.001")), (2, D("0.002")), (3, D("0.004"))]) == D("0.002833333333")
    # A missing slot keeps the others' weights (slots 1 and 3: (0.001 + 3·0.004) / 4).
    assert f.weighted_mean([(1, D("0.001")), (3, D("0.004"))]) == D("0.00325")
    assert f.weighted_mean([]) is None


def test_seed_rate_premium_plus_interest_then_ema():
    # 0.0003 + 0.0001 = 0.0004, no previous rate: no smoothing.
    assert f.rate_seed(premium=D("0.0003"), interest=I, floor=FLOOR, cap=CAP, previous=None) == D("0.0004")
    # EMA: 0.3·0.0004 + 0.7·0.0001 = 0.00012 + 0.00007 = 0.00019.
    assert f.rate_seed(premium=D("0.0003"), interest=I, floor=FLOOR, cap=CAP, previous=D("0.0001")) == D("0.00019")
    # No samples: the interest alone.
    assert f.rate_seed(premium=None, interest=I, floor=FLOOR, cap=CAP, previous=None) == D("0.0001")
    # Rounded to 8 places, half even: 0.3·0.00012345 + 0.7·0 = 0.000037035 -> 0.00003704 (half even: ...035 -> ...04)
    assert f.rate_seed(premium=D("0.00002345"), interest=I, floor=FLOOR, cap=CAP, previous=D("0")) == D("0.00003704")


def test_seed_rate_clamps_premium_then_cap_and_floor():
    wide_cap, wide_floor = D("0.1"), D("-0.1")
    # Premium clamped to ±5% before the interest: 0.05 + 0.0001.
    assert f.rate_seed(premium=D("0.08"), interest=I, floor=wide_floor, cap=wide_cap, previous=None) == D("0.0501")
    assert f.rate_seed(premium=D("0.05"), interest=I, floor=wide_floor, cap=wide_cap, previous=None) == D("0.0501")
    assert f.rate_seed(premium=D("-0.08"), interest=I, floor=wide_floor, cap=wide_cap, previous=None) == D("-0.0499")
    # Then the contract's cap / floor, exactly at the edge and beyond.
    assert f.rate_seed(premium=D("0.0074"), interest=I, floor=FLOOR, cap=CAP, previous=None) == D("0.0075")
    assert f.rate_seed(premium=D("0.0080"), interest=I, floor=FLOOR, cap=CAP, previous=None) == D("0.0075")
    assert f.rate_seed(premium=D("-0.0076"), interest=I, floor=FLOOR, cap=CAP, previous=None) == D("-0.0075")
    assert f.rate_seed(premium=D("-0.02"), interest=I, floor=FLOOR, cap=CAP, previous=None) == D("-0.0075")
    # The cap applies before the EMA: 0.3·0.0075 + 0.7·(−0.0075) = −0.003.
    assert f.rate_seed(premium=D("0.08"), interest=I, floor=FLOOR, cap=CAP, previous=D("-0.0075")) == D("-0.003")


def test_impact_rate_interest_clamp_then_cap():
    # I − P = −0.0002 within ±0.05%: rate = I.
    assert f.rate_impact(premium=D("0.0003"), interest=I, floor=FLOOR, cap=CAP) == D("0.0001")
    # I − P = −0.0009 -> −0.0005: 0.001 − 0.0005.
    assert f.rate_impact(premium=D("0.001"), interest=I, floor=FLOOR, cap=CAP) == D("0.0005")
    # I − P = 0.0011 -> 0.0005: −0.001 + 0.0005.
    assert f.rate_impact(premium=D("-0.001"), interest=I, floor=FLOOR, cap=CAP) == D("-0.0005")
    # Exactly at the clamp edge: I − P = 0.0005.
    assert f.rate_impact(premium=D("-0.0004"), interest=I, floor=FLOOR, cap=CAP) == D("0.0001")
    assert f.rate_impact(premium=D("0.01"), interest=I, floor=FLOOR, cap=CAP) == D("0.0075")
    assert f.rate_impact(premium=D("-0.01"), interest=I, floor=FLOOR, cap=CAP) == D("-0.0075")
    assert f.rate_impact(premium=None, interest=I, floor=FLOOR, cap=CAP) == D("0.0001")


def test_impact_premium_index():
    index = D("50000")
    # Bid above index: (50010 − 50000) / 50000.
    assert f.premium_impact(impact_bid=D("50010"), impact_ask=D("50020"), index_price=index) == D("0.0002")
    # Ask below index: −(50000 − 49990) / 50000.
    assert f.premium_impact(impact_bid=D("49980"), impact_ask=D("49990"), index_price=index) == D("-0.0002")
    # Index inside the impact spread: 0.
    assert f.premium_impact(impact_bid=D("49990"), impact_ask=D("50010"), index_price=index) == D("0")
    # A side the book cannot fill counts 0.
    assert f.premium_impact(impact_bid=None, impact_ask=D("49990"), index_price=index) == D("-0.0002")
    assert f.premium_impact(impact_bid=None, impact_ask=None, index_price=index) == D("0")


def test_impact_price_is_the_average_fill_of_the_notional():
    asks = [(D("100"), D("1")), (D("101"), D("2"))]
    # 200 quote: 1 @ 100 (100), then 100/101 @ 101; average = 200 / (1 + 100/101) = 20200/201.
    assert f.impact_price(asks, notional=D("200"), contract_size=D("1")) == D("100.497512437811")
    # Exactly the first level.
    assert f.impact_price(asks, notional=D("100"), contract_size=D("1")) == D("100")
    # More than the book holds (100 + 202): no impact price.
    assert f.impact_price(asks, notional=D("302.01"), contract_size=D("1")) is None
    # Contract size 10: level notionals are 1000 and 2020.
    assert f.impact_price(asks, notional=D("1000"), contract_size=D("10")) == D("100")
    with pytest.raises(ValueError):
        f.impact_price(asks, notional=D("0"), contract_size=D("1"))


@pytest.mark.parametrize("size, mark, rate, expected", [
    ("2", "50000", "0.0001", "-10.00000000"),   # long pays a positive rate: 2 × 50000 × 0.0001
    ("-1", "50000", "0.0001", "5.00000000"),    # short receives it
    ("2", "50000", "-0.0001", "10.00000000"),   # long receives a negative rate
    ("-0.003", "50000", "-0.00016833", "-0.02524950"),  # short pays a negative rate: 150 × 0.00016833
    # Ties at the 9th place round half to even: 0.000000005 -> 0, 0.000000015 -> 0.00000002.
    ("1", "0.5", "0.00000001", "0E-8"),
    ("3", "0.5", "0.00000001", "-0.00000002"),
    ("0.001", "50123.7", "0.00016833", "-0.00843732"),  # 50.1237 × 0.00016833 = 0.008437322421
])
def test_payment_sign_and_rounding(size, mark, rate, expected):
    got = f.payment(size=D(size), mark_price=D(mark), rate=D(rate), contract_size=D("1"), precision=8)
    assert got == D(expected)


# -- the payment formula as the settlement runs it (PostgreSQL) --------------------------------------

def _payments_sql(sizes, *, mark, rate, contract_size, precision):
    """formulas.PAYMENT_SQL over a list of sizes, as the settlement runs it over positions."""
    from django.db import connection

    sql = (f"SELECT {f.PAYMENT_SQL} FROM unnest(%(sizes)s::numeric[]) WITH ORDINALITY AS p(size, i) "
           f"{f.PAYMENT_SQL_FROM} ORDER BY p.i")
    params = f.payment_sql_params(mark_price=mark, rate=rate, contract_size=contract_size, precision=precision)
    with connection.cursor() as cursor:
        cursor.execute(sql, {**params, "sizes": sizes})
        return [row[0] for row in cursor.fetchall()]


def _check_sql_equals_formula(sizes, mark, rate, contract_size, precision):
    expected = [f.payment(size=s, mark_price=mark, rate=rate, contract_size=contract_size, precision=precision)
                for s in sizes]
    got = _payments_sql(sizes, mark=mark, rate=rate, contract_size=contract_size, precision=precision)
    # Bit for bit: the same value and the same scale (the ledger stores what it gets).
    assert [(g, g.as_tuple().exponent) for g in got] == [(e, -precision) for e in expected]


@pytest.mark.django_db
def test_payment_sql_rounds_ties_half_even_like_the_formula():
    # 0.001 × 50 × 0.0000001 = 0.000000005: a tie at 8 places, 0 is even; 0.003 gives 0.000000015 → 2e-8.
    sizes = [D("0.001"), D("-0.001"), D("0.003"), D("-0.003"), D("0.005"), D("0.007"), D("0.002")]
    _check_sql_equals_formula(sizes, D("50"), D("0.0000001"), D("1"), 8)
    assert _payments_sql(sizes, mark=D("50"), rate=D("0.0000001"), contract_size=D("1"), precision=8) == [
        D("0"), D("0"), D("-0.00000002"), D("0.00000002"), D("-0.00000002"), D("-0.00000004"), D("-0.00000001")]


@pytest.mark.django_db
@settings(max_examples=60, deadline=None)
@given(
    size_lots=st.lists(st.integers(-10**9, 10**9).filter(bool), min_size=1, max_size=40),
    size_places=st.integers(0, 6),
    mark_ticks=st.integers(1, 10**9),
    mark_places=st.integers(0, 4),
    rate_units=st.integers(-750_000, 750_000),
    contract_size=st.sampled_from([D("1"), D("0.001"), D("0.1"), D("10"), D("100")]),
    precision=st.sampled_from([8, 6, 2, 0]),
)
def test_payment_sql_equals_the_decimal_formula_on_random_positions(size_lots, size_places, mark_ticks, mark_places,
                                                                    rate_units, contract_size, precision):
    sizes = [D(n).scaleb(-size_places) for n in size_lots]
    _check_sql_equals_formula(sizes, D(mark_ticks).scaleb(-mark_places), D(rate_units).scaleb(-8), contract_size,
                              precision)


@pytest.mark.django_db
@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(-10**18, 10**18), min_size=1, max_size=40), places=st.integers(0, 12),
       precision=st.sampled_from([8, 6, 2, 0]))
def test_half_even_sql_equals_quantize_amount(values, places, precision):
    from django.db import connection

    from apps.ledger.money import quantize_amount

    numbers = [D(v).scaleb(-places) for v in values]
    # Ties at every precision: x.5 units of the last place kept, with odd and even units.
    numbers += [D(2 * v + 1).scaleb(-precision - 1) * 5 for v in values[:5]]
    sql = f"SELECT {f.half_even_sql('x.v')} FROM unnest(%(values)s::numeric[]) WITH ORDINALITY AS x(v, i) ORDER BY x.i"
    with connection.cursor() as cursor:
        cursor.execute(sql, {**f.half_even_sql_params(precision=precision), "values": numbers})
        got = [row[0] for row in cursor.fetchall()]
    expected = [quantize_amount(n, precision) for n in numbers]
    assert [(g, g.as_tuple().exponent) for g in got] == [(e, -precision) for e in expected]
