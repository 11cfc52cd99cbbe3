"""Black–Scholes option pricing, Greeks and implied volatility for the risk desk.

The exchange lists no options yet, but the risk desk prices the optionality in its
books (insurance-fund hedges, volatility quotes) and backs volatility out of market
prices. Everything here works on NumPy arrays (one call prices a whole option chain)
and on plain floats; the implied-volatility solver is Brent's method
(`scipy.optimize.brentq`) on the seed's interval [0.001, 5], and an option that has
no implied volatility there (its price breaks a no-arbitrage bound, or it would need
a volatility outside the interval) is reported as such, never as a made-up number.
Greeks follow the seed's units: theta per calendar day (÷365), vega and rho per one
percentage point (÷100). Floats are fine here: nothing in this module is booked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import numpy as np
from scipy.optimize import brentq
from scipy.optimize.elementwise import find_root
from scipy.special import ndtr

__all__ = [
    "IV_LOWER",
    "IV_UPPER",
    "DAYS_PER_YEAR",
    "Greeks",
    "IVStatus",
    "ImpliedVolResult",
    "NoImpliedVolatility",
    "bs_price",
    "bs_greeks",
    "implied_volatility",
    "implied_volatility_array",
]

IV_LOWER = 0.001
"""Lower end of the implied-volatility search interval (seed: brentq on [0.001, 5])."""
IV_UPPER = 5.0
"""Upper end of the implied-volatility search interval (500% annualized)."""
DAYS_PER_YEAR = 365.0
"""Theta is quoted per calendar day, as in the seed and Hull."""

OptionType = Literal["call", "put"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _is_call(option_type) -> np.ndarray:
    """Map "call"/"put" (a string or an array of strings) to a boolean array."""
    kinds = np.char.lower(np.asarray(option_type, dtype=str))
    bad = ~np.isin(kinds, ("call", "put"))
    if np.any(bad):
        raise ValueError(f"option_type must be 'call' or 'put', got {np.unique(kinds[bad]).tolist()}")
    return kinds == "call"


def _prepare(S, K, T, r, sigma, option_type):
    S, K, T, r, sigma = (np.asarray(x, dtype=np.float64) for x in (S, K, T, r, sigma))
    is_call = _is_call(option_type)
    S, K, T, r, sigma, is_call = np.broadcast_arrays(S, K, T, r, sigma, is_call)
    if not all(np.all(np.isfinite(x)) for x in (S, K, T, r, sigma)):
        raise ValueError("S, K, T, r and sigma must be finite")
    if np.any(~(S > 0)) or np.any(~(K > 0)):
        raise ValueError("spot S and strike K must be positive")
    if np.any(~(T >= 0)) or np.any(~(sigma >= 0)):
        raise ValueError("T and sigma must be non-negative")
    return S, K, T, r, sigma, is_call


def _out(x: np.ndarray):
    """Return a Python float for scalar inputs, the array otherwise."""
    return float(x) if np.ndim(x) == 0 else x


def _d1_d2(S, K, T, r, sigma):
    """d1, d2 where sigma*sqrt(T) > 0; elsewhere a placeholder (masked by callers)."""
    vol_t = sigma * np.sqrt(T)
    live = vol_t > 0
    safe = np.where(live, vol_t, 1.0)
    d1 = (np.log(S / K) + (r + 0.5 * sigma * sigma) * T) / safe
    d2 = d1 - safe
    return d1, d2, live


def bs_price(S, K, T, r, sigma, option_type: OptionType | np.ndarray = "call"):
    """Black–Scholes price of European calls/puts (no dividends).

    All arguments broadcast against each other; ``option_type`` is "call", "put" or an
    array of them. T is in years, r and sigma are annualized (continuous compounding).
    At T = 0 or sigma = 0 the price is the discounted intrinsic value
    max(±(S − K·e^(−rT)), 0). Returns a float for scalar input, else an ndarray.
    """
    return _out(_price_core(*_prepare(S, K, T, r, sigma, option_type)))


def _price_core(S, K, T, r, sigma, is_call) -> np.ndarray:
    """Vectorized price on validated, broadcast float arrays (is_call boolean)."""
    disc_k = K * np.exp(-r * T)
    d1, d2, live = _d1_d2(S, K, T, r, sigma)
    call = S * ndtr(d1) - disc_k * ndtr(d2)
    put = disc_k * ndtr(-d2) - S * ndtr(-d1)
    price = np.where(is_call, call, put)
    intrinsic = np.where(is_call, np.maximum(S - disc_k, 0.0), np.maximum(disc_k - S, 0.0))
    return np.where(live, price, intrinsic)


@dataclass(frozen=True)
class Greeks:
    """Black–Scholes sensitivities in the seed's units.

    delta: per unit of spot; gamma: delta per unit of spot; theta: price change per
    calendar day (÷365); vega: price change per 1 volatility point (÷100);
    rho: price change per 1 percentage point of the rate (÷100).
    Each field is a float for scalar input, an ndarray otherwise.
    """

    delta: float | np.ndarray
    gamma: float | np.ndarray
    theta: float | np.ndarray
    vega: float | np.ndarray
    rho: float | np.ndarray


def bs_greeks(S, K, T, r, sigma, option_type: OptionType | np.ndarray = "call") -> Greeks:
    """All five Black–Scholes Greeks (see `Greeks` for the units); vectorized like `bs_price`.

    Where sigma·sqrt(T) = 0 the option is a (discounted) forward or expired: delta is
    the 0/±1 step, gamma and vega are 0, and theta/rho are those of the discounted
    strike when the option is in the money (0 at expiry).
    """
    S, K, T, r, sigma, is_call = _prepare(S, K, T, r, sigma, option_type)
    disc = np.exp(-r * T)
    disc_k = K * disc
    d1, d2, live = _d1_d2(S, K, T, r, sigma)
    sqrt_t = np.sqrt(T)
    pdf_d1 = _INV_SQRT_2PI * np.exp(-0.5 * d1 * d1)
    safe_denominator = np.where(live, S * sigma * sqrt_t, 1.0)

    delta = np.where(is_call, ndtr(d1), ndtr(d1) - 1.0)
    gamma = pdf_d1 / safe_denominator
    decay = -S * pdf_d1 * sigma / (2.0 * np.where(live, sqrt_t, 1.0))
    theta_year = np.where(is_call, decay - r * disc_k * ndtr(d2), decay + r * disc_k * ndtr(-d2))
    vega = S * pdf_d1 * sqrt_t
    rho = np.where(is_call, K * T * disc * ndtr(d2), -K * T * disc * ndtr(-d2))

    # Degenerate branch: the option is worth max(±(S - K e^{-rT}), 0).
    itm = np.where(is_call, S > disc_k, disc_k > S)
    sign = np.where(is_call, 1.0, -1.0)
    step_delta = np.where(itm, sign, 0.0)
    step_theta = np.where(itm & (T > 0), -sign * r * disc_k, 0.0)
    step_rho = np.where(itm, sign * K * T * disc, 0.0)

    return Greeks(
        delta=_out(np.where(live, delta, step_delta)),
        gamma=_out(np.where(live, gamma, 0.0)),
        theta=_out(np.where(live, theta_year, step_theta) / DAYS_PER_YEAR),
        vega=_out(np.where(live, vega, 0.0) / 100.0),
        rho=_out(np.where(live, rho, step_rho) / 100.0),
    )


class IVStatus(IntEnum):
    """Outcome of an implied-volatility solve (one per option in the array API)."""

    OK = 0
    BELOW_LOWER_BOUND = 1
    """Price ≤ the no-arbitrage floor max(±(S − K·e^(−rT)), 0): no volatility gives it."""
    ABOVE_UPPER_BOUND = 2
    """Price ≥ S (call) or ≥ K·e^(−rT) (put): no volatility gives it."""
    OUTSIDE_SEARCH_INTERVAL = 3
    """Inside the no-arbitrage bounds but the volatility would be < 0.001 or > 5."""
    EXPIRED = 4
    """T = 0: the price carries no volatility information."""
    INVALID_INPUT = 5
    """Non-finite price/spot/strike, non-positive spot/strike, negative T (a price ≤ 0 is at or
    below the floor: BELOW_LOWER_BOUND)."""
    NOT_CONVERGED = 6


class NoImpliedVolatility(ValueError):
    """Raised by `implied_volatility` when the price has no implied volatility in [0.001, 5].

    ``status`` says why (an `IVStatus`), ``lower_bound``/``upper_bound`` are the
    no-arbitrage price bounds the price was checked against.
    """

    def __init__(self, status: IVStatus, price: float, lower_bound: float, upper_bound: float):
        self.status = status
        self.price = price
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        super().__init__(
            f"no implied volatility: {status.name} (price {price!r}, no-arbitrage bounds "
            f"[{lower_bound!r}, {upper_bound!r}], search interval [{IV_LOWER}, {IV_UPPER}])"
        )


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _price_scalar(S: float, K: float, T: float, r: float, sigma: float, is_call: bool) -> float:
    """Scalar Black–Scholes with the math module: the brentq objective (about 10x faster
    than going through NumPy for one option). Requires sigma*sqrt(T) > 0."""
    vol_t = sigma * math.sqrt(T)
    d1 = (math.log(S / K) + (r + 0.5 * sigma * sigma) * T) / vol_t
    d2 = d1 - vol_t
    disc_k = K * math.exp(-r * T)
    if is_call:
        return S * _norm_cdf(d1) - disc_k * _norm_cdf(d2)
    return disc_k * _norm_cdf(-d2) - S * _norm_cdf(-d1)


def _bounds(S, K, T, r, is_call):
    disc_k = K * np.exp(-r * T)
    lower = np.where(is_call, np.maximum(S - disc_k, 0.0), np.maximum(disc_k - S, 0.0))
    upper = np.where(is_call, S, disc_k)
    return lower, upper


def _classify(price, S, K, T, r, is_call):
    """Vectorized pre-check: the status of every option before any root finding
    (OK means: inside the no-arbitrage bounds, still to be bracketed)."""
    status = np.full(price.shape, IVStatus.OK, dtype=np.int8)
    finite = np.isfinite(price) & np.isfinite(S) & np.isfinite(K) & np.isfinite(T) & np.isfinite(r)
    valid = finite & (S > 0) & (K > 0) & (T >= 0)
    status[~valid] = IVStatus.INVALID_INPUT
    with np.errstate(invalid="ignore", over="ignore"):
        lower, upper = _bounds(S, K, T, r, is_call)
    expired = valid & (T == 0)
    status[expired] = IVStatus.EXPIRED
    live = valid & ~expired
    status[live & (price <= lower)] = IVStatus.BELOW_LOWER_BOUND
    status[live & (price >= upper)] = IVStatus.ABOVE_UPPER_BOUND
    return status, lower, upper


def implied_volatility(
    price: float,
    S: float,
    K: float,
    T: float,
    r: float,
    option_type: OptionType = "call",
    *,
    xtol: float = 1e-12,
) -> float:
    """Implied volatility of one option by Brent's method on [0.001, 5].

    Returns the annualized volatility. Raises `NoImpliedVolatility` (a ValueError) with
    a `status` when the price is outside the no-arbitrage bounds, when the option has
    expired, or when the volatility that reproduces the price lies outside the search
    interval.
    """
    p, s, k, t, rr = (np.asarray(x, dtype=np.float64) for x in (price, S, K, T, r))
    is_call = bool(_is_call(option_type))
    status, lower, upper = _classify(p, s, k, t, rr, np.asarray(is_call))
    status = IVStatus(int(status))
    if status is not IVStatus.OK:
        raise NoImpliedVolatility(status, float(price), float(lower), float(upper))
    return _brent_one(float(price), float(S), float(K), float(T), float(r), is_call, float(lower), float(upper), xtol)


def _brent_one(price, S, K, T, r, is_call, lower, upper, xtol) -> float:
    f_lo = _price_scalar(S, K, T, r, IV_LOWER, is_call) - price
    f_hi = _price_scalar(S, K, T, r, IV_UPPER, is_call) - price
    if f_lo > 0 or f_hi < 0:
        raise NoImpliedVolatility(IVStatus.OUTSIDE_SEARCH_INTERVAL, price, lower, upper)
    if f_lo == 0:
        return IV_LOWER
    if f_hi == 0:
        return IV_UPPER
    root, info = brentq(
        lambda sigma: _price_scalar(S, K, T, r, sigma, is_call) - price,
        IV_LOWER,
        IV_UPPER,
        xtol=xtol,
        full_output=True,
        disp=False,
    )
    if not info.converged:
        raise NoImpliedVolatility(IVStatus.NOT_CONVERGED, price, lower, upper)
    return float(root)


@dataclass(frozen=True)
class ImpliedVolResult:
    """Implied volatilities of an array of options.

    ``vol`` holds the volatility where ``status == IVStatus.OK`` and NaN elsewhere;
    ``status`` (int8 array of `IVStatus` codes) says why an option has no solution.
    """

    vol: np.ndarray
    status: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        return self.status == IVStatus.OK


def implied_volatility_array(
    price,
    S,
    K,
    T,
    r,
    option_type="call",
    *,
    method: Literal["brentq", "vectorized"] = "brentq",
    xtol: float = 1e-12,
) -> ImpliedVolResult:
    """Implied volatilities of many options at once (arguments broadcast).

    The no-arbitrage checks and the bracket test on [0.001, 5] are vectorized. The root
    itself is found per option with ``scipy.optimize.brentq`` (``method="brentq"``, the
    default, the seed's method) or for all options in one vectorized bracketing solve
    with ``scipy.optimize.elementwise.find_root`` (``method="vectorized"``,
    Chandrupatla's method: Brent's family, same bracket and tolerance, much faster on
    long chains). Options without a solution get NaN and a status, never an exception.
    """
    p, S, K, T, r = (np.asarray(x, dtype=np.float64) for x in (price, S, K, T, r))
    is_call = _is_call(option_type)
    p, S, K, T, r, is_call = np.broadcast_arrays(p, S, K, T, r, is_call)
    status, lower, upper = _classify(p, S, K, T, r, is_call)
    vol = np.full(p.shape, np.nan)

    if method not in ("brentq", "vectorized"):
        raise ValueError(f"unknown method {method!r}")
    todo = np.flatnonzero(status.ravel() == IVStatus.OK)
    if todo.size:
        sp, sS, sK, sT, sr, sc = (a.ravel()[todo] for a in (p, S, K, T, r, is_call))
        f_lo = _price_core(sS, sK, sT, sr, np.full(todo.size, IV_LOWER), sc) - sp
        f_hi = _price_core(sS, sK, sT, sr, np.full(todo.size, IV_UPPER), sc) - sp
        bracketed = (f_lo <= 0) & (f_hi >= 0)
        sub_status = np.where(bracketed, IVStatus.OK, IVStatus.OUTSIDE_SEARCH_INTERVAL).astype(np.int8)
        sub_vol = np.full(todo.size, np.nan)
        sub_vol[bracketed & (f_lo == 0)] = IV_LOWER
        sub_vol[bracketed & (f_hi == 0) & (f_lo != 0)] = IV_UPPER
        solve = np.flatnonzero(bracketed & (f_lo < 0) & (f_hi > 0))
        if method == "brentq":
            for j in solve:
                try:
                    sub_vol[j] = _brent_one(
                        float(sp[j]), float(sS[j]), float(sK[j]), float(sT[j]), float(sr[j]),
                        bool(sc[j]), 0.0, 0.0, xtol,
                    )
                except NoImpliedVolatility as exc:
                    sub_status[j] = exc.status
        elif solve.size:
            res = find_root(
                lambda sigma, *a: _price_core(*a[:4], sigma, a[4]) - a[5],
                (np.full(solve.size, IV_LOWER), np.full(solve.size, IV_UPPER)),
                args=(sS[solve], sK[solve], sT[solve], sr[solve], sc[solve], sp[solve]),
                tolerances={"xatol": xtol, "xrtol": 4 * np.finfo(float).eps},
            )
            sub_vol[solve] = np.where(res.success, res.x, np.nan)
            sub_status[solve] = np.where(res.success, IVStatus.OK, IVStatus.NOT_CONVERGED)
        vol_flat = vol.reshape(-1)
        status_flat = status.reshape(-1)
        vol_flat[todo] = sub_vol
        status_flat[todo] = sub_status
    return ImpliedVolResult(vol=vol, status=status)
