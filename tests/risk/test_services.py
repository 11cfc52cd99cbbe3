"""Risk services against PostgreSQL: volatility estimates, account assessment, the beat
run (idempotency, chunks, failure alert), margin adjustments. Numbers by hand in comments."""
import math
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pytest

from apps.ops.models import Alert
from apps.risk import services
from apps.risk.analytics import (
    Position as LibPosition,
    ReturnsHistory,
    RiskLevel,
    ScoreCalibration,
    assess_portfolio_risk,
    fit_garch,
    simulate_garch,
)
from apps.risk.models import RiskRun, RiskSnapshot, RunStatus, VolatilityEstimate, VolatilityMethod
from apps.risk.services import (
    risk_account_assess,
    risk_assess_all,
    risk_assess_chunk,
    risk_initial_margin_rate,
    risk_maintenance_margin_addon,
    risk_margin_adjustment,
    risk_run_start,
    risk_volatility_update,
)

from .conftest import NOW, fund, hold, set_mark, write_hourly

D = Decimal
Z95, Z99 = 1.6448536269514722, 2.3263478740408408


def alternating(n, start=50_000.0, step=0.01):
    """n prices whose log returns alternate +step, -step."""
    logs = np.concatenate([[0.0], np.cumsum([step if i % 2 == 0 else -step for i in range(n - 1)])])
    return list(start * np.exp(logs))


# ------------------------------------------------------------------ volatility


def test_volatility_short_history_falls_back_to_sample(btcusdt):
    write_hourly(btcusdt, alternating(101))
    row = risk_volatility_update(contract=btcusdt, now=NOW)
    assert row.observations == 100 and row.method == VolatilityMethod.SAMPLE and row.fallback
    # realized: sqrt(252·24 · mean(r²)) = sqrt(6048 · 1e-4) = 0.77769
    assert row.realized_volatility == pytest.approx(math.sqrt(6048e-4), rel=1e-6)
    # sample std (ddof 1) of ±0.01 over 100 returns = 0.01·sqrt(100/99); one day = ×√24
    assert row.forecast_daily_volatility == pytest.approx(0.01 * math.sqrt(100 / 99) * math.sqrt(24), rel=1e-6)
    # seed margin measure: population std of the last 24 simple returns (e^±0.01 − 1) × √24
    up, down = math.expm1(0.01), math.expm1(-0.01)
    assert row.daily_volatility_24h == pytest.approx((up - down) / 2 * math.sqrt(24), rel=1e-6)  # 4.90%
    # 4.90% daily: maintenance add-on 0.1%, no initial volatility adjustment; no trades: liquidity 0 → +30%
    assert row.maintenance_addon == D("0.001")
    assert row.liquidity_score == 0 and row.initial_margin_factor == D("0.3")
    assert risk_initial_margin_rate(contract=btcusdt, leverage=20) == D("0.065")  # 1/20 × 1.3
    assert risk_maintenance_margin_addon(contract=btcusdt) == D("0.001")
    # Same hour again: the row is replaced, not duplicated.
    risk_volatility_update(contract=btcusdt, now=NOW + timedelta(minutes=30))
    assert VolatilityEstimate.objects.filter(contract=btcusdt).count() == 1


def test_volatility_garch_fit_matches_the_library(btcusdt):
    returns = simulate_garch(600, omega=2e-6, alpha=0.08, beta=0.9, rng=3)
    write_hourly(btcusdt, list(50_000 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))))
    row = risk_volatility_update(contract=btcusdt, now=NOW)
    assert row.method == VolatilityMethod.GARCH and not row.fallback and row.garch_converged
    fit = fit_garch(returns)
    assert row.garch_alpha == pytest.approx(fit.alpha, rel=1e-3, abs=1e-4)
    assert row.garch_beta == pytest.approx(fit.beta, rel=1e-3, abs=1e-4)
    assert row.garch_loglikelihood == pytest.approx(fit.loglikelihood, rel=1e-6)
    # one-day volatility = sqrt(sum of the next 24 hourly variance forecasts)
    assert row.forecast_daily_volatility == pytest.approx(math.sqrt(fit.forecast_variance(24).sum()), rel=1e-3)
    assert len(row.garch_forecast) == 24


def test_no_history_uses_the_default_and_no_adjustment(btcusdt):
    assert risk_margin_adjustment(contract=btcusdt).factor == 0  # before any estimate: no adjustment
    assert risk_initial_margin_rate(contract=btcusdt, leverage=10) == D("0.1")
    services.risk_caches_clear()
    row = risk_volatility_update(contract=btcusdt, now=NOW)
    assert row.method == VolatilityMethod.DEFAULT and row.forecast_daily_volatility == 0.05
    assert row.daily_volatility_24h == 0 and row.maintenance_addon == 0
    with pytest.raises(ValueError):
        risk_initial_margin_rate(contract=btcusdt, leverage=0)


# ------------------------------------------------------------------ assessment


def test_single_long_by_hand(alice, usdt, btcusdt):
    fund(alice, usdt, "100000")
    set_mark(btcusdt, "50000")
    hold(alice, btcusdt, "1", "50000")
    snap = risk_account_assess(user=alice, now=NOW)
    # No history: default 5% daily volatility. One long of 50,000: σ_P&L = 2,500.
    assert snap.equity == D("100000") and snap.gross_notional == D("50000")
    assert float(snap.var_95) == pytest.approx(Z95 * 2500, rel=0.03)  # 4,112 ± Monte Carlo error
    assert float(snap.var_99) == pytest.approx(Z99 * 2500, rel=0.03)  # 5,816
    stress = {s["name"]: s["pnl"] for s in snap.stress}
    assert stress["market_down_30"] == pytest.approx(-15_000)
    assert stress["market_up_30"] == pytest.approx(15_000)
    assert stress["volatility_spike_3x"] == pytest.approx(-Z99 * 3 * 2500)  # −17,447.6: the worst
    assert snap.worst_scenario == "volatility_spike_3x"
    assert float(snap.stress_loss) == pytest.approx(Z99 * 3 * 2500, rel=1e-9)
    assert snap.concentration == 1.0
    expected = (0.3 * float(snap.var_95) / 100_000 / 5 * 100 + 0.2 * float(snap.var_99) / 100_000 / 5 * 100
                + 0.3 * Z99 * 7500 / 100_000 / 20 * 100 + 0.2 * 100)
    assert snap.overall_score == pytest.approx(expected, rel=1e-6)  # ≈ 20.7
    assert snap.level == RiskLevel.LOW
    assert [r["code"] for r in snap.recommendations] == ["DIVERSIFY"]
    assert snap.hist_var_95 is None  # no price history

    # The same numbers as the library's assess_portfolio_risk on the same scenarios and
    # covariance (a two-row history with variance 0.05²).
    model = services.risk_market_model_build(now=NOW)
    a = 0.05 / math.sqrt(2)
    history = ReturnsHistory(("BTCUSDT",), np.array([[a], [-a]]))
    lib = assess_portfolio_risk([LibPosition("BTCUSDT", 1.0, 50_000.0)], 100_000, history,
                                scenarios=model.scenarios(paths=10_000, seed=20_240_601),
                                calibration=ScoreCalibration(5.0, 20.0))
    assert float(snap.var_99) == pytest.approx(lib.var_99, abs=1e-6)
    assert float(snap.stress_loss) == pytest.approx(lib.stress_loss, abs=1e-6)
    assert snap.overall_score == pytest.approx(lib.overall_score, abs=1e-9)


def test_history_gives_correlation_and_historical_var(carol_short_btc, btcusdt, ethusdt):
    # BTC log returns alternate +0.002, 0; ETH's are twice that: correlation 1. Every
    # 24-hour window gains 12 × 0.002 = 0.024 in log terms.
    btc = list(50_000 * np.exp(np.concatenate([[0.0], np.cumsum([0.002 if i % 2 == 0 else 0.0 for i in range(59)])])))
    eth = list(3_000 * np.exp(np.concatenate([[0.0], np.cumsum([0.004 if i % 2 == 0 else 0.0 for i in range(59)])])))
    write_hourly(btcusdt, btc)
    write_hourly(ethusdt, eth)
    run = risk_assess_all(now=NOW)
    assert run.market["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert run.market["correlation"][0][1] == pytest.approx(1.0)
    assert len(run.history["daily_returns"]) == 59 - 24 + 1  # overlapping one-day windows
    snap = RiskSnapshot.objects.get(run=run)
    # Short 1 BTC at 50,000: every day loses 50,000 × (e^0.024 − 1) = 1,214.55
    assert float(snap.hist_var_95) == pytest.approx(50_000 * math.expm1(0.024), rel=1e-6)
    assert float(snap.hist_var_99) == pytest.approx(50_000 * math.expm1(0.024), rel=1e-6)


@pytest.fixture
def carol_short_btc(make_user, usdt, btcusdt, ethusdt):
    carol = make_user("carol")
    fund(carol, usdt, "20000")
    set_mark(btcusdt, "50000")
    set_mark(ethusdt, "3000")
    hold(carol, btcusdt, "-1", "50000")
    return carol


@pytest.fixture
def book(make_user, usdt, btcusdt, ethusdt):
    """alice long 1 BTC (entry 48,000: +2,000 uPnL), bob short 10 ETH and long 0.5 BTC, dave flat."""
    users = {name: make_user(name) for name in ("alice", "bob", "dave")}
    for user in users.values():
        fund(user, usdt, "50000")
    set_mark(btcusdt, "50000")
    set_mark(ethusdt, "3000")
    hold(users["alice"], btcusdt, "1", "48000")
    hold(users["bob"], ethusdt, "-10", "3000")
    hold(users["bob"], btcusdt, "0.5", "50000")
    return users


def test_beat_run_is_idempotent_per_bucket(book, settings):
    run = risk_assess_all(now=NOW)  # bucket 12:00 (15-minute buckets)
    assert run.status == RunStatus.DONE and run.accounts == 2 and run.bucket.minute == 0
    snaps = {s.user.username: s for s in RiskSnapshot.objects.filter(run=run).select_related("user")}
    assert set(snaps) == {"alice", "bob"}  # dave has no position
    assert snaps["alice"].equity == D("52000")  # 50,000 wallet + 2,000 uPnL
    assert run.total_var_95 == snaps["alice"].var_95 + snaps["bob"].var_95
    # Same bucket again: nothing happens; a chunk delivered twice writes nothing.
    assert risk_assess_all(now=NOW + timedelta(minutes=5)) is None
    assert risk_assess_chunk(run_id=run.pk, user_ids=[book["alice"].pk, book["bob"].pk]) == 0
    assert RiskSnapshot.objects.count() == 2 and RiskRun.objects.count() == 1

    # The on-demand assessment gives the beat job's numbers exactly (same model and seed).
    on_demand = risk_account_assess(user=book["bob"], now=NOW)
    for field in ("equity", "var_95", "var_99", "es_99", "stress_loss", "overall_score", "concentration"):
        assert getattr(on_demand, field) == getattr(snaps["bob"], field), field

    # Next bucket, in chunks of one: a run whose worker died is re-planned once stale and
    # only the missing account is written.
    settings.RISK_ASSESS_CHUNK = 1
    plan = risk_run_start(now=NOW + timedelta(minutes=8))  # 12:15:30, bucket 12:15
    assert len(plan.chunks) == 2
    risk_assess_chunk(run_id=plan.run.pk, user_ids=plan.chunks[0])
    plan.run.refresh_from_db()
    assert plan.run.status == RunStatus.RUNNING
    assert risk_run_start(now=NOW + timedelta(minutes=18)) is None  # running for 600 s: not stale yet
    again = risk_run_start(now=NOW + timedelta(minutes=22))  # 14 min > RISK_RUN_STALE_SECONDS
    assert again.run.pk == plan.run.pk
    written = [risk_assess_chunk(run_id=again.run.pk, user_ids=c) for c in again.chunks]
    assert sorted(written) == [0, 1]
    again.run.refresh_from_db()
    assert again.run.status == RunStatus.DONE and again.run.snapshots.count() == 2


def test_a_lost_run_is_marked_failed_by_the_next_one(book, settings):
    settings.RISK_ASSESS_CHUNK = 1
    plan = risk_run_start(now=NOW)
    risk_assess_chunk(run_id=plan.run.pk, user_ids=plan.chunks[0])  # the other chunk's worker died
    nxt = risk_assess_all(now=NOW + timedelta(minutes=15))
    assert nxt.status == RunStatus.DONE
    plan.run.refresh_from_db()
    assert plan.run.status == RunStatus.FAILED and plan.run.error == "abandoned: 1 of 2 accounts assessed"
    assert Alert.objects.filter(dedup_key="job_failure:risk_assess").exists()


def test_failed_run_raises_an_alert(book, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("numerical trouble")

    monkeypatch.setattr(services, "assess_matrix", boom)
    with pytest.raises(RuntimeError):
        risk_assess_all(now=NOW)
    run = RiskRun.objects.get()
    assert run.status == RunStatus.FAILED and "numerical trouble" in run.error
    alert = Alert.objects.get(dedup_key="job_failure:risk_assess")
    assert "numerical trouble" in alert.message


def test_celery_task_dispatches_chunks(book, settings, monkeypatch, django_capture_on_commit_callbacks):
    """The beat task plans the run and hands one chunk task per chunk to the workers after commit.

    The group is run here, chunk by chunk, instead of through a broker: the test is about
    the tasks, not about which Celery app earlier tests left current.
    """
    from apps.risk import tasks

    settings.RISK_ASSESS_CHUNK = 1
    dispatched = []

    class EagerGroup:
        def __init__(self, signatures):
            self.signatures = list(signatures)

        def apply_async(self):
            dispatched.extend(self.signatures)
            for signature in self.signatures:
                signature.apply()

    monkeypatch.setattr(tasks, "group", EagerGroup)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.risk_assess_task.apply().get() == 2
    assert len(dispatched) == 2
    run = RiskRun.objects.get()
    assert run.status == RunStatus.DONE and run.snapshots.count() == 2


def test_volatility_task_updates_every_contract(book):
    from apps.risk.tasks import risk_volatility_update_task

    assert risk_volatility_update_task.apply().get() == 2
    assert VolatilityEstimate.objects.count() == 2


def test_vectorized_stress_equals_the_library():
    from apps.risk.analytics import run_stress_tests
    from apps.risk.market import stress_matrix

    rng = np.random.default_rng(4)
    vols = rng.uniform(0.02, 0.08, 5)
    corr = np.full((5, 5), 0.6) + 0.4 * np.eye(5)
    cov = corr * np.outer(vols, vols)
    w = rng.normal(0, 10_000, (50, 5)) * (rng.random((50, 5)) < 0.6)
    got = stress_matrix(w, cov)
    for i in range(50):
        assert got[i] == pytest.approx([s.pnl for s in run_stress_tests(w[i], cov)], rel=1e-12, abs=1e-9)
