"""Volatility estimators: realized volatility and a maximum-likelihood GARCH(1,1).

Margin add-ons, VaR and option pricing all need a volatility number per symbol. This
module turns a price or return history into one: realized volatility from log
returns with the seed's annualization factors (daily 252, hourly 252×24, minute
252×24×60), and GARCH(1,1) fitted by maximum likelihood (SLSQP under the
stationarity constraint α + β < 1, analytic gradient, the recursion run through
`scipy.signal.lfilter`) with the mean-reverting forecast toward the long-run variance.
The likelihood is set up exactly as the `arch` package does it (same EWMA backcast
of the initial variance), so the two fits can be compared number for number; `arch`
itself is only a test dependency. With fewer than `GARCH_MIN_OBSERVATIONS` returns,
or when the fit fails, `garch_volatility` falls back to the sample volatility and
says so. Floats only: nothing here is booked money.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import minimize
from scipy.signal import lfilter

__all__ = [
    "ANNUALIZATION_FACTORS",
    "GARCH_MIN_OBSERVATIONS",
    "GarchFit",
    "VolatilityEstimate",
    "log_returns",
    "realized_volatility",
    "sample_volatility",
    "fit_garch",
    "garch_volatility",
    "garch_forecast",
    "simulate_garch",
]

Frequency = Literal["daily", "hourly", "minute"]

ANNUALIZATION_FACTORS: dict[str, int] = {
    "daily": 252,
    "hourly": 252 * 24,
    "minute": 252 * 24 * 60,
}
"""Periods per year by sampling frequency, as in the seed (252 trading days)."""

GARCH_MIN_OBSERVATIONS = 252
"""Below this many returns `garch_volatility` uses the sample volatility instead of
GARCH (the seed's window): four parameters by maximum likelihood need about a year of
daily data to be stable."""

_LOG_2PI = math.log(2.0 * math.pi)
_BACKCAST_TAU = 75
_BACKCAST_LAMBDA = 0.94


def _as_1d(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    return x


def log_returns(prices) -> np.ndarray:
    """Log returns ln(p_t / p_{t-1}) of a positive price series (length n-1)."""
    p = _as_1d(prices, "prices")
    if np.any(p <= 0):
        raise ValueError("prices must be positive")
    return np.diff(np.log(p))


def realized_volatility(prices, frequency: Frequency = "daily") -> float:
    """Annualized realized volatility sqrt(factor × mean(r²)) of log returns r.

    ``frequency`` picks the seed's annualization factor (daily 252, hourly 252×24,
    minute 252×24×60). The mean is taken about zero (the usual realized-variance
    convention; drift is negligible at these frequencies). Fewer than two prices
    give 0.0.

    The seed multiplies the *sum* of squared returns by the factor, which grows with
    the window length; dividing by the number of returns makes the result an
    annualized volatility whatever the window.
    """
    if frequency not in ANNUALIZATION_FACTORS:
        raise ValueError(f"frequency must be one of {sorted(ANNUALIZATION_FACTORS)}")
    r = log_returns(prices)
    if r.size == 0:
        return 0.0
    return float(math.sqrt(ANNUALIZATION_FACTORS[frequency] * float(np.mean(r * r))))


def sample_volatility(returns, periods_per_year: float = 252) -> float:
    """Annualized sample standard deviation (ddof=1) of per-period returns; 0.0 for
    fewer than two returns."""
    r = _as_1d(returns, "returns")
    if r.size < 2:
        return 0.0
    return float(np.std(r, ddof=1) * math.sqrt(periods_per_year))


@dataclass(frozen=True)
class GarchFit:
    """A fitted GARCH(1,1): r_t = mu + e_t, e_t = sigma_t z_t, z_t ~ N(0, 1),
    sigma²_t = omega + alpha e²_{t-1} + beta sigma²_{t-1}.

    Parameters are per period in the units of the returns given. ``loglikelihood`` is
    the full Gaussian log-likelihood (with the 2π term, as `arch` reports it).
    ``conditional_variance`` is sigma²_t over the sample.
    """

    mu: float
    omega: float
    alpha: float
    beta: float
    loglikelihood: float
    nobs: int
    converged: bool
    mean: Literal["constant", "zero"]
    message: str = ""
    conditional_variance: np.ndarray = field(default=None, repr=False, compare=False)
    last_residual: float = field(default=0.0, repr=False)

    @property
    def persistence(self) -> float:
        """alpha + beta: how slowly shocks to variance die out (< 1 when stationary)."""
        return self.alpha + self.beta

    @property
    def long_run_variance(self) -> float:
        """Unconditional variance omega / (1 - alpha - beta), per period."""
        return self.omega / (1.0 - self.persistence)

    def next_variance(self) -> float:
        """One-step-ahead conditional variance sigma²_{T+1} (per period)."""
        return self.omega + self.alpha * self.last_residual**2 + self.beta * float(self.conditional_variance[-1])

    def forecast_variance(self, horizon: int) -> np.ndarray:
        """Per-period variance forecasts for h = 1..horizon:
        E[sigma²_{T+h}] = LR + (alpha + beta)^(h-1) (sigma²_{T+1} - LR).
        """
        if horizon < 1:
            raise ValueError("horizon must be >= 1")
        lr = self.long_run_variance
        h = np.arange(horizon, dtype=np.float64)
        return lr + self.persistence**h * (self.next_variance() - lr)

    def forecast_volatility(self, horizon: int, periods_per_year: float = 252) -> np.ndarray:
        """Annualized volatility forecasts for h = 1..horizon (sqrt of the variance
        forecasts × periods_per_year)."""
        return np.sqrt(self.forecast_variance(horizon) * periods_per_year)


def _backcast(resid: np.ndarray) -> float:
    """Initial variance: EWMA (lambda 0.94) of the first 75 squared residuals, the
    same value `arch` uses, so both likelihoods start from the same sigma²_0."""
    tau = min(_BACKCAST_TAU, resid.size)
    w = _BACKCAST_LAMBDA ** np.arange(tau)
    w /= w.sum()
    return float(np.dot(w, resid[:tau] ** 2))


def _beta_filter(x: np.ndarray, beta: float) -> np.ndarray:
    """y_t = x_t + beta y_{t-1}, y_{-1} = 0: the GARCH recursion without a Python loop."""
    return lfilter([1.0], [1.0, -beta], x)


def _variance_path(y, mu, omega, alpha, beta, backcast):
    e = y - mu
    e2 = e * e
    x = np.empty_like(y)
    x[0] = omega + (alpha + beta) * backcast
    x[1:] = omega + alpha * e2[:-1]
    return e, e2, _beta_filter(x, beta)


def _neg_loglik_and_grad(theta, y, backcast, fit_mean):
    """Average negative log-likelihood and its analytic gradient.

    theta = (mu, omega, alpha, beta) or (omega, alpha, beta) when the mean is zero.
    The derivatives of sigma²_t obey the same beta-recursion as sigma²_t itself, so
    each is one more lfilter call.
    """
    if fit_mean:
        mu, omega, alpha, beta = theta
    else:
        mu, (omega, alpha, beta) = 0.0, theta
    n = y.size
    e, e2, h = _variance_path(y, mu, omega, alpha, beta, backcast)
    if not np.all(h > 0) or not np.all(np.isfinite(h)):
        return 1e10, np.zeros_like(theta)
    ll = -0.5 * (n * _LOG_2PI + np.sum(np.log(h)) + np.sum(e2 / h))

    # dl/dh_t = -0.5 (1/h_t - e²_t/h²_t)
    g = -0.5 * (1.0 / h - e2 / (h * h))
    x = np.empty(n)
    x[0] = 1.0
    x[1:] = 1.0
    d_omega = _beta_filter(x, beta)
    x[0] = backcast
    x[1:] = e2[:-1]
    d_alpha = _beta_filter(x, beta)
    x[0] = backcast
    x[1:] = h[:-1]
    d_beta = _beta_filter(x, beta)
    grad = [np.dot(g, d_omega), np.dot(g, d_alpha), np.dot(g, d_beta)]
    if fit_mean:
        x[0] = 0.0
        x[1:] = -2.0 * alpha * e[:-1]
        d_mu = _beta_filter(x, beta)
        grad.insert(0, np.dot(g, d_mu) + np.sum(e / h))
    return -ll / n, -np.asarray(grad) / n


def fit_garch(returns, *, mean: Literal["constant", "zero"] = "constant") -> GarchFit:
    """Fit GARCH(1,1) with Gaussian errors by maximum likelihood.

    ``returns`` are per-period returns (any scale: the data are standardized
    internally for the optimizer and the parameters mapped back). ``mean`` is
    "constant" (estimate mu) or "zero" (mu = 0), like `arch`'s ConstantMean /
    ZeroMean. Constraints: omega > 0, alpha ≥ 0, beta ≥ 0, alpha + beta ≤ 1 − 1e-6.
    Several starting points are scored and SLSQP runs from the best one.
    Needs at least 10 returns; `garch_volatility` applies the practical threshold.
    """
    if mean not in ("constant", "zero"):
        raise ValueError("mean must be 'constant' or 'zero'")
    r = _as_1d(returns, "returns")
    n = r.size
    if n < 10:
        raise ValueError("GARCH needs at least 10 returns")
    fit_mean = mean == "constant"
    scale = float(np.sqrt(np.mean((r - r.mean()) ** 2))) if fit_mean else float(np.sqrt(np.mean(r * r)))
    if not scale > 0:
        raise ValueError("returns have zero variance")
    y = r / scale
    resid0 = y - y.mean() if fit_mean else y
    backcast = _backcast(resid0)
    var0 = float(np.mean(resid0**2))

    starts = []
    for a, b in ((0.05, 0.90), (0.10, 0.80), (0.10, 0.88), (0.03, 0.95), (0.20, 0.70), (0.05, 0.50)):
        th = [var0 * (1.0 - a - b), a, b]
        starts.append(np.array(([float(y.mean())] if fit_mean else []) + th))
    best = min(starts, key=lambda th: _neg_loglik_and_grad(th, y, backcast, fit_mean)[0])

    bounds = [(1e-10, 10.0 * var0), (0.0, 1.0), (0.0, 1.0)]
    if fit_mean:
        bounds.insert(0, (-10.0, 10.0))
    k = 1 if fit_mean else 0
    constraint = {
        "type": "ineq",
        "fun": lambda th: np.array([1.0 - 1e-6 - th[k + 1] - th[k + 2]]),
        "jac": lambda th: np.array([[0.0] * k + [0.0, -1.0, -1.0]]),
    }
    res = minimize(
        _neg_loglik_and_grad,
        best,
        args=(y, backcast, fit_mean),
        jac=True,
        method="SLSQP",
        bounds=bounds,
        constraints=[constraint],
        options={"maxiter": 500, "ftol": 1e-12},
    )
    theta = np.clip(res.x, [b[0] for b in bounds], [b[1] for b in bounds])
    mu_y = float(theta[0]) if fit_mean else 0.0
    omega_y, alpha, beta = (float(v) for v in theta[k:])
    e, _, h = _variance_path(y, mu_y, omega_y, alpha, beta, backcast)
    ll_y = -0.5 * (n * _LOG_2PI + np.sum(np.log(h)) + np.sum(e * e / h))
    return GarchFit(
        mu=mu_y * scale,
        omega=omega_y * scale**2,
        alpha=alpha,
        beta=beta,
        # Rescaling y = r / s shifts the Gaussian log-likelihood by -n ln s.
        loglikelihood=float(ll_y - n * math.log(scale)),
        nobs=n,
        converged=bool(res.success),
        mean=mean,
        message=str(res.message),
        conditional_variance=h * scale**2,
        last_residual=float(e[-1] * scale),
    )


@dataclass(frozen=True)
class VolatilityEstimate:
    """Annualized volatility with how it was obtained.

    ``method`` is "garch" (``volatility`` is the one-step-ahead GARCH volatility and
    ``fit`` holds the model) or "sample" (too little history or no converged fit:
    ``volatility`` is the annualized sample standard deviation, ``fit`` is None or
    the unconverged fit for inspection).
    """

    volatility: float
    method: Literal["garch", "sample"]
    nobs: int
    fit: GarchFit | None = None


def garch_volatility(
    returns,
    *,
    periods_per_year: float = 252,
    min_observations: int = GARCH_MIN_OBSERVATIONS,
    mean: Literal["constant", "zero"] = "constant",
) -> VolatilityEstimate:
    """Current annualized volatility from GARCH(1,1), or the sample volatility when
    there are fewer than ``min_observations`` returns (default 252) or the fit does
    not converge to a stationary model."""
    r = _as_1d(returns, "returns")
    if r.size < max(min_observations, 10) or not np.var(r) > 0:  # too few, or nothing to fit
        return VolatilityEstimate(sample_volatility(r, periods_per_year), "sample", r.size)
    fit = fit_garch(r, mean=mean)
    if not fit.converged or not fit.persistence < 1.0:
        return VolatilityEstimate(sample_volatility(r, periods_per_year), "sample", r.size, fit)
    return VolatilityEstimate(float(math.sqrt(fit.next_variance() * periods_per_year)), "garch", r.size, fit)


def garch_forecast(
    returns,
    horizon: int = 30,
    *,
    periods_per_year: float = 252,
    min_observations: int = GARCH_MIN_OBSERVATIONS,
    mean: Literal["constant", "zero"] = "constant",
) -> np.ndarray:
    """Annualized volatility forecasts for h = 1..horizon periods ahead (the seed's
    default horizon 30). Mean-reverting toward the GARCH long-run volatility; flat at
    the sample volatility when `garch_volatility` falls back."""
    est = garch_volatility(returns, periods_per_year=periods_per_year, min_observations=min_observations, mean=mean)
    if est.method == "garch":
        return est.fit.forecast_volatility(horizon, periods_per_year)
    return np.full(horizon, est.volatility)


def simulate_garch(
    n: int,
    *,
    omega: float,
    alpha: float,
    beta: float,
    mu: float = 0.0,
    rng: np.random.Generator | int | None = None,
    burn: int = 500,
) -> np.ndarray:
    """Simulate n returns of a Gaussian GARCH(1,1) (for tests and what-if studies).

    Starts at the unconditional variance and discards ``burn`` draws. Requires
    omega > 0, alpha, beta ≥ 0 and alpha + beta < 1.
    """
    if not (omega > 0 and alpha >= 0 and beta >= 0 and alpha + beta < 1):
        raise ValueError("need omega > 0, alpha, beta >= 0 and alpha + beta < 1")
    rng = np.random.default_rng(rng)
    z = rng.standard_normal(n + burn)
    e = np.empty(n + burn)
    h = omega / (1.0 - alpha - beta)
    for t in range(n + burn):  # the recursion is nonlinear in the draws: no lfilter here
        e[t] = math.sqrt(h) * z[t]
        h = omega + alpha * e[t] * e[t] + beta * h
    return mu + e[burn:]
