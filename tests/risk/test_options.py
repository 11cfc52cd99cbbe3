"""Black–Scholes prices, Greeks and implied volatility against textbook values
(Hull, Options, Futures and Other Derivatives), parity and round trips."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from apps.risk.analytics.options import (
    IV_LOWER,
    IV_UPPER,
    IVStatus,
    NoImpliedVolatility,
    bs_greeks,
    bs_price,
    implied_volatility,
    implied_volatility_array,
)


# Hull, Example 15.6: S=42, K=40, r=10%, sigma=20%, T=0.5.
def test_hull_call_and_put_prices():
    assert bs_price(42, 40, 0.5, 0.10, 0.20, "call") == pytest.approx(4.76, abs=0.005)
    assert bs_price(42, 40, 0.5, 0.10, 0.20, "put") == pytest.approx(0.81, abs=0.005)


# Hull's Greek-letter examples (chapter 19): S=49, K=50, r=5%, sigma=20%, T=20 weeks.
def test_hull_greeks_of_call():
    S, K, r, sigma, T = 49.0, 50.0, 0.05, 0.20, 0.3846
    assert bs_price(S, K, T, r, sigma, "call") == pytest.approx(2.40, abs=0.005)
    g = bs_greeks(S, K, T, r, sigma, "call")
    assert g.delta == pytest.approx(0.522, abs=0.0005)
    assert g.gamma == pytest.approx(0.066, abs=0.0005)
    assert g.vega == pytest.approx(0.121, abs=0.0005)  # per 1% (12.1 per unit)
    assert g.theta == pytest.approx(-0.0118, abs=0.00005)  # per calendar day
    assert g.theta * 365 == pytest.approx(-4.31, abs=0.005)  # per year
    assert g.rho == pytest.approx(0.0891, abs=0.00005)  # per 1%


def test_put_greeks_relate_to_call_greeks():
    S, K, r, sigma, T = 49.0, 50.0, 0.05, 0.20, 0.3846
    c = bs_greeks(S, K, T, r, sigma, "call")
    p = bs_greeks(S, K, T, r, sigma, "put")
    disc_k = K * math.exp(-r * T)
    assert p.delta == pytest.approx(c.delta - 1.0, abs=1e-12)
    assert p.gamma == pytest.approx(c.gamma, abs=1e-12)
    assert p.vega == pytest.approx(c.vega, abs=1e-12)
    assert c.theta - p.theta == pytest.approx(-r * disc_k / 365, abs=1e-12)
    assert c.rho - p.rho == pytest.approx(K * T * math.exp(-r * T) / 100, abs=1e-12)


@pytest.mark.parametrize("kind", ["call", "put"])
def test_greeks_match_finite_differences_in_seed_units(kind):
    S, K, T, r, sigma = 105.0, 100.0, 0.75, 0.03, 0.35
    f = lambda **kw: bs_price(**{**dict(S=S, K=K, T=T, r=r, sigma=sigma, option_type=kind), **kw})
    g = bs_greeks(S, K, T, r, sigma, kind)
    h = 1e-4
    assert g.delta == pytest.approx((f(S=S + h) - f(S=S - h)) / (2 * h), rel=1e-6)
    hs = 1e-2  # a second difference needs a wider step than float rounding
    assert g.gamma == pytest.approx((f(S=S + hs) - 2 * f() + f(S=S - hs)) / hs**2, rel=1e-5)
    assert g.vega == pytest.approx((f(sigma=sigma + h) - f(sigma=sigma - h)) / (2 * h) / 100, rel=1e-6)
    assert g.rho == pytest.approx((f(r=r + h) - f(r=r - h)) / (2 * h) / 100, rel=1e-6)
    # theta: value change as one calendar day passes (time to expiry shrinks).
    assert g.theta == pytest.approx(-(f(T=T + h) - f(T=T - h)) / (2 * h) / 365, rel=1e-6)


def test_vectorized_price_and_greeks_equal_scalar_calls():
    rng = np.random.default_rng(7)
    n = 50
    S = rng.uniform(50, 150, n)
    K = rng.uniform(50, 150, n)
    T = rng.uniform(0.01, 2, n)
    sig = rng.uniform(0.05, 1.5, n)
    kind = np.where(rng.random(n) < 0.5, "call", "put")
    prices = bs_price(S, K, T, 0.02, sig, kind)
    greeks = bs_greeks(S, K, T, 0.02, sig, kind)
    assert prices.shape == (n,)
    for i in range(n):
        assert prices[i] == pytest.approx(bs_price(S[i], K[i], T[i], 0.02, sig[i], kind[i]), rel=1e-14)
        gi = bs_greeks(S[i], K[i], T[i], 0.02, sig[i], kind[i])
        for name in ("delta", "gamma", "theta", "vega", "rho"):
            assert getattr(greeks, name)[i] == pytest.approx(getattr(gi, name), rel=1e-12, abs=1e-15)


def test_degenerate_expiry_and_zero_volatility():
    assert bs_price(110, 100, 0.0, 0.05, 0.3, "call") == pytest.approx(10.0)
    assert bs_price(90, 100, 0.0, 0.05, 0.3, "put") == pytest.approx(10.0)
    assert bs_price(90, 100, 0.0, 0.05, 0.3, "call") == 0.0
    # sigma = 0: the option is worth the discounted forward intrinsic value.
    assert bs_price(100, 100, 1.0, 0.05, 0.0, "call") == pytest.approx(100 - 100 * math.exp(-0.05))
    g = bs_greeks(100, 100, 1.0, 0.05, 0.0, "call")
    assert (g.delta, g.gamma, g.vega) == (1.0, 0.0, 0.0)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        bs_price(100, 100, 1.0, 0.05, 0.2, "straddle")
    with pytest.raises(ValueError):
        bs_price(-1, 100, 1.0, 0.05, 0.2)
    with pytest.raises(ValueError):
        bs_price(100, 100, -1.0, 0.05, 0.2)


option_inputs = dict(
    S=st.floats(1.0, 1e5),
    moneyness=st.floats(0.5, 2.0),
    T=st.floats(1 / 365, 3.0),
    r=st.floats(-0.02, 0.15),
    sigma=st.floats(0.05, 3.0),
)


@given(**option_inputs)
def test_put_call_parity(S, moneyness, T, r, sigma):
    K = S * moneyness
    c = bs_price(S, K, T, r, sigma, "call")
    p = bs_price(S, K, T, r, sigma, "put")
    assert c - p == pytest.approx(S - K * math.exp(-r * T), abs=1e-9 * S)


@given(**option_inputs, kind=st.sampled_from(["call", "put"]))
@settings(deadline=None)
def test_implied_volatility_round_trip(S, moneyness, T, r, sigma, kind):
    K = S * moneyness
    price = bs_price(S, K, T, r, sigma, kind)
    vega_per_unit = bs_greeks(S, K, T, r, sigma, kind).vega * 100
    # Where the price barely depends on volatility, no solver can recover it from a
    # float price: those cases only need to reprice correctly (checked below).
    assume(vega_per_unit > 1e-6 * S)
    try:
        iv = implied_volatility(price, S, K, T, r, kind)
    except NoImpliedVolatility as exc:
        # Only legitimate when the price sits on a no-arbitrage bound in float.
        assert exc.status in (IVStatus.BELOW_LOWER_BOUND, IVStatus.OUTSIDE_SEARCH_INTERVAL)
        assert abs(price - exc.lower_bound) <= 1e-9 * S
        return
    assert bs_price(S, K, T, r, iv, kind) == pytest.approx(price, abs=1e-9 * S)
    if vega_per_unit > 1e-3 * S:
        assert iv == pytest.approx(sigma, abs=1e-6)


def test_implied_volatility_hull_example():
    price = bs_price(42, 40, 0.5, 0.10, 0.20, "call")
    assert implied_volatility(price, 42, 40, 0.5, 0.10, "call") == pytest.approx(0.20, abs=1e-9)


@pytest.mark.parametrize("method", ["brentq", "vectorized"])
def test_implied_volatility_array_round_trip(method):
    rng = np.random.default_rng(11)
    n = 400
    S = rng.uniform(50, 150, n)
    K = S * rng.uniform(0.7, 1.3, n)
    T = rng.uniform(0.05, 2, n)
    sig = rng.uniform(0.1, 2.0, n)
    kind = np.where(rng.random(n) < 0.5, "call", "put")
    prices = bs_price(S, K, T, 0.03, sig, kind)
    res = implied_volatility_array(prices, S, K, T, 0.03, kind, method=method)
    assert res.vol.shape == (n,) and res.ok.all()
    np.testing.assert_allclose(res.vol, sig, atol=1e-7)
    scalar = [implied_volatility(prices[i], S[i], K[i], T[i], 0.03, kind[i]) for i in range(0, n, 40)]
    np.testing.assert_allclose(res.vol[::40], scalar, atol=1e-9)


def test_implied_volatility_array_keeps_shape_and_flags_no_solution():
    prices = np.array([[4.7594, 45.0], [1.0, 0.8086]])
    kinds = np.array([["call", "call"], ["call", "put"]])
    res = implied_volatility_array(prices, 42, 40, 0.5, 0.10, kinds)
    assert res.vol.shape == (2, 2)
    assert res.status[0, 0] == IVStatus.OK and res.vol[0, 0] == pytest.approx(0.2, abs=1e-4)
    assert res.status[0, 1] == IVStatus.ABOVE_UPPER_BOUND and math.isnan(res.vol[0, 1])
    assert res.status[1, 0] == IVStatus.BELOW_LOWER_BOUND and math.isnan(res.vol[1, 0])
    assert res.status[1, 1] == IVStatus.OK and res.vol[1, 1] == pytest.approx(0.2, abs=1e-3)


@pytest.mark.parametrize(
    "price, S, K, T, r, kind, status",
    [
        (43.0, 42, 40, 0.5, 0.1, "call", IVStatus.ABOVE_UPPER_BOUND),  # call worth more than the spot
        (1.0, 42, 40, 0.5, 0.1, "call", IVStatus.BELOW_LOWER_BOUND),  # below S - K e^{-rT} = 3.95
        (0.0, 42, 50, 0.5, 0.1, "call", IVStatus.BELOW_LOWER_BOUND),  # zero price, OTM
        (40.0, 42, 40, 0.5, 0.1, "put", IVStatus.ABOVE_UPPER_BOUND),  # put above K e^{-rT} = 38.05
        (41.9, 42, 40, 0.5, 0.1, "call", IVStatus.OUTSIDE_SEARCH_INTERVAL),  # needs sigma > 5
        (0.01, 100, 100, 1.0, 0.0, "call", IVStatus.OUTSIDE_SEARCH_INTERVAL),  # needs sigma ~ 0.00025
        (2.0, 42, 40, 0.0, 0.1, "call", IVStatus.EXPIRED),
        (float("nan"), 42, 40, 0.5, 0.1, "call", IVStatus.INVALID_INPUT),
    ],
)
def test_no_solution_is_typed(price, S, K, T, r, kind, status):
    with pytest.raises(NoImpliedVolatility) as info:
        implied_volatility(price, S, K, T, r, kind)
    assert info.value.status is status
    assert isinstance(info.value, ValueError)
    for method in ("brentq", "vectorized"):
        res = implied_volatility_array([price], S, K, T, r, kind, method=method)
        assert res.status[0] == status and math.isnan(res.vol[0])


def test_search_interval_is_the_seeds():
    assert (IV_LOWER, IV_UPPER) == (0.001, 5.0)
    # A price made with sigma = 4.9 is still found, one made with 5.5 is not.
    assert implied_volatility(bs_price(100, 100, 1, 0.0, 4.9), 100, 100, 1, 0.0) == pytest.approx(4.9, abs=1e-8)
    with pytest.raises(NoImpliedVolatility) as info:
        implied_volatility(bs_price(100, 100, 1, 0.0, 5.5), 100, 100, 1, 0.0)
    assert info.value.status is IVStatus.OUTSIDE_SEARCH_INTERVAL


@pytest.mark.parametrize("args", [(100, 100, math.inf, 0.05, 0.2), (100, 100, 1, 0.05, math.inf),
                                  (math.inf, 100, 1, 0.05, 0.2), (100, math.nan, 1, 0.05, 0.2)])
def test_non_finite_inputs_are_refused_not_nan(args):
    with pytest.raises(ValueError, match="finite"):
        bs_price(*args)
    with pytest.raises(ValueError, match="finite"):
        bs_greeks(*args)

