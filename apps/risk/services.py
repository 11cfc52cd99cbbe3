"""Risk services: volatility estimates, account assessments, the beat run, the
pre-trade check and the risk-adjusted margin rates.

- `risk_volatility_update(*, contract)`: hourly closes over the lookback → realized
  volatility, GARCH(1,1) with its one-day forecast (sample/default fallback), the seed's
  24-hour daily volatility, the liquidity score and the margin adjustments they imply;
  one row per contract and hour (re-running the hour overwrites it).
- `risk_account_assess(*, user)`: one account now, from `account_overview`, a market
  model built from price history, 10,000 seeded Monte Carlo paths, historical VaR,
  stress, concentration, score and level; stored as a `RiskSnapshot`.
- `risk_run_start` / `risk_assess_chunk` / `risk_assess_all`: the beat job. One
  `RiskRun` per time bucket (unique: a second start in the same bucket does nothing)
  holds the market model; accounts with open positions are split into chunks that
  workers assess vectorized (one `batch_var` per chunk on the run's shared scenarios)
  and write with ON CONFLICT DO NOTHING (unique per user and bucket), so a chunk
  delivered twice writes nothing twice; the run finishes when every listed account
  has its snapshot. Failures raise a `job_failure:risk_*` alert.
- `risk_pretrade_check(...)`: parametric, no simulation; see its docstring.
- `risk_margin_adjustment`, `risk_initial_margin_rate`, `risk_maintenance_margin_addon`:
  what order entry and the margin code apply, read from the latest hourly estimate.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal
from typing import NamedTuple

import numpy as np
from django.db import IntegrityError, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from apps.contracts.models import Contract
from apps.positions.selectors import account_overview
from apps.trading.models import OPEN_STATUSES, Order, Side
from exchange.errors import ErrorCode, ExchangeError
from exchange.pgbulk import text_literals

from .analytics import (
    GARCH_MIN_OBSERVATIONS,
    RISK_LEVEL_THRESHOLDS,
    RISK_TOO_HIGH,
    RiskLevel,
    ScoreCalibration,
    daily_volatility_from_hourly_prices,
    garch_volatility,
    liquidity_adjustment,
    log_returns,
    maintenance_volatility_addon,
    realized_volatility,
    volatility_adjustment,
)
from .analytics.volatility import ANNUALIZATION_FACTORS
from .conf import risk_setting
from .market import HOURS_PER_DAY, AccountRisk, MarketModel, align_hourly, assess_matrix, build_market_model, parametric_score
from .models import RiskRun, RiskSnapshot, RunStatus, VolatilityEstimate, VolatilityMethod
from .selectors import (
    SETTLE_ASSET,
    Exposure,
    contracts_for_risk,
    exposures_for_users,
    hour_floor,
    hourly_closes,
    traded_notional,
    users_with_open_positions,
    volatility_latest_many,
)

logger = logging.getLogger(__name__)

HOURS_PER_YEAR = ANNUALIZATION_FACTORS["hourly"]
FORECAST_HOURS = HOURS_PER_DAY
AMOUNT_PLACES = Decimal("0.00000001")
ZERO = Decimal(0)


def _calibration() -> ScoreCalibration:
    return ScoreCalibration(
        var_full_scale=float(risk_setting("RISK_SCORE_VAR_FULL_SCALE")),
        stress_full_scale=float(risk_setting("RISK_SCORE_STRESS_FULL_SCALE")),
    )


def _max_level() -> RiskLevel:
    value = risk_setting("RISK_PRETRADE_MAX_LEVEL")
    return value if isinstance(value, RiskLevel) else RiskLevel[str(value).upper()]


def _amount(x: float | None) -> Decimal | None:
    if x is None:
        return None
    if not math.isfinite(x):
        raise ValueError(f"non-finite amount {x!r}")
    return Decimal(repr(float(x))).quantize(AMOUNT_PLACES)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------- volatility


def risk_volatility_update(*, contract: Contract, now: datetime | None = None) -> VolatilityEstimate:
    """Estimate the contract's volatility for the current hour and store it (idempotent
    per contract and hour: a second call in the same hour replaces the row)."""
    now = now or timezone.now()
    bucket = hour_floor(now)
    start = bucket - timedelta(days=float(risk_setting("RISK_LOOKBACK_DAYS")))
    closes = hourly_closes(contract=contract, start=start, end=bucket)
    hours = [start + timedelta(hours=i) for i in range(int((bucket - start) / timedelta(hours=1)))]
    grid = align_hourly({contract.symbol: closes}, hours)[:, 0]
    prices = grid[~np.isnan(grid)]
    returns = log_returns(prices) if prices.size >= 2 else np.empty(0)
    default_daily = float(risk_setting("RISK_DEFAULT_DAILY_VOLATILITY"))
    fit = None
    if returns.size >= 2 and float(np.std(returns)) > 0:
        est = garch_volatility(
            returns, periods_per_year=HOURS_PER_YEAR,
            min_observations=int(risk_setting("RISK_GARCH_MIN_HOURS") or GARCH_MIN_OBSERVATIONS),
        )
        fit = est.fit
        if est.method == "garch":
            method = VolatilityMethod.GARCH
            forecast_daily = math.sqrt(float(np.sum(fit.forecast_variance(FORECAST_HOURS))))
            forecast = [float(v) for v in fit.forecast_volatility(FORECAST_HOURS, HOURS_PER_YEAR)]
        else:
            method = VolatilityMethod.SAMPLE
            forecast_daily = est.volatility / math.sqrt(ANNUALIZATION_FACTORS["daily"])
            forecast = [est.volatility] * FORECAST_HOURS
    else:
        method = VolatilityMethod.DEFAULT
        forecast_daily = default_daily
        forecast = []
    daily_24h = daily_volatility_from_hourly_prices(prices[-(HOURS_PER_DAY + 1):])
    volume = traded_notional(contract=contract, since=now - timedelta(hours=24))
    liquidity = min(1.0, float(volume) / float(risk_setting("RISK_LIQUIDITY_FULL_NOTIONAL")))
    values = dict(
        computed_at=now,
        observations=int(returns.size),
        window_start=hours[0] if hours else None,
        window_end=bucket,
        realized_volatility=realized_volatility(prices, "hourly") if prices.size >= 2 else 0.0,
        method=method,
        fallback=method != VolatilityMethod.GARCH,
        forecast_daily_volatility=forecast_daily,
        garch_mu=fit.mu if fit else None,
        garch_omega=fit.omega if fit else None,
        garch_alpha=fit.alpha if fit else None,
        garch_beta=fit.beta if fit else None,
        garch_loglikelihood=fit.loglikelihood if fit else None,
        garch_converged=fit.converged if fit else None,
        garch_forecast=forecast,
        daily_volatility_24h=daily_24h,
        traded_notional_24h=volume,
        liquidity_score=liquidity,
        initial_margin_factor=volatility_adjustment(daily_24h) + liquidity_adjustment(liquidity),
        maintenance_addon=maintenance_volatility_addon(daily_24h),
    )
    row, _ = VolatilityEstimate.objects.update_or_create(contract=contract, bucket=bucket, defaults=values)
    _margin_cache.pop(contract.pk, None)
    return row


def risk_volatility_update_all(*, now: datetime | None = None) -> list[VolatilityEstimate]:
    """`risk_volatility_update` for every contract the model covers; a contract that
    fails raises a `job_failure:risk_volatility:<symbol>` alert and the others go on."""
    from apps.ops.alerts import alert_raise, alert_resolve
    from apps.ops.models import AlertLevel

    out = []
    for contract in contracts_for_risk():
        key = f"job_failure:risk_volatility:{contract.symbol}"
        try:
            out.append(risk_volatility_update(contract=contract, now=now))
        except Exception as exc:  # noqa: BLE001 - one contract must not stop the others
            logger.exception("volatility update of %s failed", contract.symbol)
            alert_raise(key=key, level=AlertLevel.WARNING,
                        message=f"Volatility update of {contract.symbol} failed: {exc!r}")
        else:
            alert_resolve(key=key, note="next update succeeded")
    return out


# -------------------------------------------------------------- market model


def risk_market_model_build(
    *, contracts: list[Contract] | None = None, now: datetime | None = None, key: str = ""
) -> MarketModel:
    """The market model from price history (hourly closes over the lookback) and the
    contracts' latest volatility estimates (default volatility where none)."""
    now = now or timezone.now()
    contracts = contracts_for_risk() if contracts is None else contracts
    end = hour_floor(now)
    start = end - timedelta(days=float(risk_setting("RISK_LOOKBACK_DAYS")))
    hours = [start + timedelta(hours=i) for i in range(int((end - start) / timedelta(hours=1)))]
    closes = {c.symbol: hourly_closes(contract=c, start=start, end=end) for c in contracts}
    prices = align_hourly(closes, hours) if contracts else np.empty((0, 0))
    estimates = volatility_latest_many(contracts=contracts)
    vols = {c.symbol: estimates[c.pk].forecast_daily_volatility for c in contracts if c.pk in estimates}
    sources = {c.symbol: estimates[c.pk].method for c in contracts if c.pk in estimates}
    return build_market_model(
        symbols=[c.symbol for c in contracts],
        prices=prices,
        daily_vols=vols,
        vol_sources=sources,
        min_history_hours=int(risk_setting("RISK_MIN_HISTORY_HOURS")),
        default_vol=float(risk_setting("RISK_DEFAULT_DAILY_VOLATILITY")),
        default_correlation=float(risk_setting("RISK_DEFAULT_CORRELATION")),
        built_at=now,
        key=key,
    )


def model_with_symbols(model: MarketModel, symbols) -> MarketModel:
    """The model extended by symbols it lacks (default volatility and correlation, no
    history): a contract listed after the model was built is still assessed."""
    extra = [s for s in dict.fromkeys(symbols) if s not in model.index]
    if not extra:
        return model
    n, k = len(model.symbols), len(extra)
    corr = np.full((n + k, n + k), float(risk_setting("RISK_DEFAULT_CORRELATION")))
    corr[:n, :n] = model.correlation
    np.fill_diagonal(corr, 1.0)
    returns = None
    if model.daily_returns is not None:
        returns = np.hstack([model.daily_returns, np.zeros((model.daily_returns.shape[0], k))])
    return MarketModel(
        symbols=model.symbols + tuple(extra),
        daily_vols=np.concatenate([model.daily_vols, np.full(k, float(risk_setting("RISK_DEFAULT_DAILY_VOLATILITY")))]),
        correlation=corr,
        vol_sources=model.vol_sources + ("default",) * k,
        history_symbols=model.history_symbols,
        daily_returns=returns,
        built_at=model.built_at,
        key=f"{model.key}+{','.join(extra)}",
    )


_model_lock = threading.Lock()
_model_cache: dict[str, tuple[float, MarketModel]] = {}


def market_model_current() -> MarketModel:
    """The newest run's market model (no history part), cached in-process for
    RISK_MODEL_CACHE_SECONDS; before any run, defaults for every contract with the
    latest volatility estimates (no price history read on this path)."""
    now = time.monotonic()
    hit = _model_cache.get("current")
    if hit is not None and now - hit[0] < float(risk_setting("RISK_MODEL_CACHE_SECONDS")):
        return hit[1]
    with _model_lock:
        run = RiskRun.objects.exclude(market={}).defer("history").order_by("-bucket").first()
        if run is not None:
            model = MarketModel.from_json(run.market, key=f"run:{run.pk}", built_at=run.started_at)
        else:
            contracts = list(Contract.objects.order_by("symbol"))
            estimates = volatility_latest_many(contracts=contracts)
            model = build_market_model(
                symbols=[c.symbol for c in contracts],
                prices=np.full((0, len(contracts)), np.nan),
                daily_vols={c.symbol: estimates[c.pk].forecast_daily_volatility for c in contracts if c.pk in estimates},
                vol_sources={c.symbol: estimates[c.pk].method for c in contracts if c.pk in estimates},
                min_history_hours=1,
                default_vol=float(risk_setting("RISK_DEFAULT_DAILY_VOLATILITY")),
                default_correlation=float(risk_setting("RISK_DEFAULT_CORRELATION")),
                key="default",
            )
        _model_cache["current"] = (time.monotonic(), model)
        return model


def risk_caches_clear() -> None:
    """Forget the in-process market model and margin adjustments (tests, after a run)."""
    _model_cache.clear()
    _margin_cache.clear()
    _run_models.clear()


# ------------------------------------------------------------- assessments


def _snapshot(
    *, user_id: int, risk: AccountRisk, exposure_positions: list[dict], model: MarketModel, bucket: datetime,
    now: datetime, run: RiskRun | None, paths: int, seed: int, equity: Decimal,
) -> RiskSnapshot:
    held = {p["symbol"] for p in exposure_positions}
    return RiskSnapshot(
        user_id=user_id,
        run=run,
        bucket=bucket,
        computed_at=now,
        equity=equity,
        gross_notional=_amount(risk.gross_notional),
        net_notional=_amount(risk.net_notional),
        var_95=_amount(risk.var_95),
        var_99=_amount(risk.var_99),
        es_95=_amount(risk.es_95),
        es_99=_amount(risk.es_99),
        hist_var_95=_amount(risk.hist_var_95),
        hist_var_99=_amount(risk.hist_var_99),
        paths=paths,
        stress=risk.stress,
        stress_loss=_amount(risk.stress_loss),
        worst_scenario=risk.worst_scenario,
        concentration=risk.concentration,
        var_95_ratio=_finite(risk.var_95_ratio),
        var_99_ratio=_finite(risk.var_99_ratio),
        stress_loss_ratio=_finite(risk.stress_loss_ratio),
        components=risk.components,
        overall_score=risk.overall_score,
        level=int(risk.level),
        recommendations=risk.recommendations,
        inputs={
            "positions": exposure_positions,
            "equity": str(equity),
            "seed": seed,
            "horizon_days": 1,
            "model": model.key,
            "model_built_at": model.built_at.isoformat() if model.built_at else None,
            "volatility": {
                s: {"daily": float(model.daily_vols[model.index[s]]), "source": model.vol_sources[model.index[s]]}
                for s in sorted(held)
            },
            "historical_days": int(model.daily_returns.shape[0]) if model.daily_returns is not None else 0,
            "calibration": {"var_full_scale": _calibration().var_full_scale,
                            "stress_full_scale": _calibration().stress_full_scale},
        },
    )


def _assess(model: MarketModel, exposures: list[Exposure]) -> tuple[MarketModel, list[AccountRisk]]:
    model = model_with_symbols(model, [p["symbol"] for e in exposures for p in e.positions])
    w = np.zeros((len(exposures), len(model.symbols)))
    for i, e in enumerate(exposures):
        for symbol, notional in e.notional_by_symbol().items():
            w[i, model.index[symbol]] += notional
    equity = np.array([float(e.equity) for e in exposures])
    risks = assess_matrix(
        model, w, equity,
        paths=int(risk_setting("RISK_VAR_PATHS")), seed=int(risk_setting("RISK_VAR_SEED")),
        calibration=_calibration(), thresholds=RISK_LEVEL_THRESHOLDS,
    )
    return model, risks


def risk_account_assess(*, user, now: datetime | None = None) -> RiskSnapshot:
    """Assess one account now (its positions at mark from `account_overview`, a market
    model built from price history, as the beat run builds it) and store the snapshot."""
    now = now or timezone.now()
    overview = account_overview(user=user)
    asset = overview.asset(SETTLE_ASSET)
    exposure = Exposure(equity=asset.margin_balance if asset is not None else ZERO)
    contracts = []
    for view in overview.positions:
        position, c = view.position, view.contract
        if position.size == 0:
            continue
        mark = view.mark if view.mark is not None else position.entry_price
        contracts.append(c)
        exposure.positions.append({
            "symbol": c.symbol, "size": str(position.size), "mark": str(mark),
            "entry_price": str(position.entry_price), "notional": str(position.size * mark * c.contract_size),
            "unrealized_pnl": str(view.risk.unrealized_pnl), "leverage": position.leverage,
            "margin_type": position.margin_type,
        })
    # The run's contract set, so the scenarios (and numbers) match the beat job's exactly.
    covered = contracts_for_risk()
    covered += [c for c in contracts if c.pk not in {k.pk for k in covered}]
    model = risk_market_model_build(contracts=sorted(covered, key=lambda c: c.symbol), now=now, key="on-demand")
    model, (risk,) = _assess(model, [exposure])
    paths, seed = int(risk_setting("RISK_VAR_PATHS")), int(risk_setting("RISK_VAR_SEED"))
    snapshot = _snapshot(user_id=user.pk, risk=risk, exposure_positions=exposure.positions, model=model,
                         bucket=now, now=now, run=None, paths=paths, seed=seed, equity=exposure.equity)
    snapshot.save()
    return snapshot


def _bucket_of(now: datetime) -> datetime:
    step = int(risk_setting("RISK_ASSESS_INTERVAL_SECONDS"))
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % step, tz=dt_timezone.utc)


@dataclass
class RunPlan:
    run: RiskRun
    chunks: list[list[int]]


def risk_run_start(*, now: datetime | None = None) -> RunPlan | None:
    """Open this time bucket's run and plan its chunks, or None when the bucket's run
    exists already (done, or running and not yet stale). A run left RUNNING for longer
    than RISK_RUN_STALE_SECONDS (its worker died) is planned again: chunks already
    written are skipped by the unique snapshot constraint."""
    now = now or timezone.now()
    bucket = _bucket_of(now)
    _runs_abandon(before=bucket, now=now)
    try:
        with transaction.atomic():
            run = RiskRun.objects.create(bucket=bucket, started_at=now)
    except IntegrityError:
        run = RiskRun.objects.get(bucket=bucket)
        stale = now - run.started_at > timedelta(seconds=int(risk_setting("RISK_RUN_STALE_SECONDS")))
        if run.status == RunStatus.DONE or (run.status == RunStatus.RUNNING and not stale):
            return None
        run.started_at, run.status, run.error = now, RunStatus.RUNNING, ""
    model = risk_market_model_build(now=now, key=f"run:{run.pk}")
    run.market, run.history = model.to_json()
    users = users_with_open_positions()
    size = max(1, int(risk_setting("RISK_ASSESS_CHUNK")))
    chunks = [users[i:i + size] for i in range(0, len(users), size)]
    run.accounts, run.chunks = len(users), len(chunks)
    run.save()
    if not chunks:
        _run_finish(run.pk, now=now)
        run.refresh_from_db()
    return RunPlan(run=run, chunks=chunks)


def _runs_abandon(*, before: datetime, now: datetime) -> None:
    """Earlier runs still RUNNING past RISK_RUN_STALE_SECONDS lost a worker: mark them
    FAILED (their snapshots stay) and raise the job-failure alert."""
    cutoff = now - timedelta(seconds=int(risk_setting("RISK_RUN_STALE_SECONDS")))
    lost = RiskRun.objects.filter(bucket__lt=before, status=RunStatus.RUNNING, started_at__lt=cutoff)
    for run in lost:
        done = run.snapshots.count()
        risk_run_fail(run_id=run.pk, error=f"abandoned: {done} of {run.accounts} accounts assessed")


_run_models: dict[int, MarketModel] = {}


def _model_of(run: RiskRun) -> MarketModel:
    model = _run_models.get(run.pk)
    if model is None or model.built_at != run.started_at:
        model = MarketModel.from_json(run.market, run.history, key=f"run:{run.pk}", built_at=run.started_at)
        _run_models.clear()  # one run at a time per worker: keep only the newest scenarios
        _run_models[run.pk] = model
    return model


def risk_assess_chunk(*, run_id: int, user_ids: list[int], now: datetime | None = None) -> int:
    """Assess these users for the run (vectorized) and write their snapshots; returns how
    many were written (0 when a previous delivery of the chunk wrote them all)."""
    now = now or timezone.now()
    run = RiskRun.objects.get(pk=run_id)
    if run.status == RunStatus.DONE:
        return 0
    done = set(RiskSnapshot.objects.filter(bucket=run.bucket, user_id__in=user_ids).values_list("user_id", flat=True))
    todo = [uid for uid in user_ids if uid not in done]
    if todo:
        exposures = exposures_for_users(user_ids=todo)
        rows = [exposures[uid] for uid in todo]
        model, risks = _assess(_model_of(run), rows)
        paths, seed = int(risk_setting("RISK_VAR_PATHS")), int(risk_setting("RISK_VAR_SEED"))
        snapshots = [
            _snapshot(user_id=uid, risk=risk, exposure_positions=e.positions, model=model, bucket=run.bucket,
                      now=now, run=run, paths=paths, seed=seed, equity=e.equity)
            for uid, e, risk in zip(todo, rows, risks)
        ]
        written = len(RiskSnapshot.objects.bulk_create(snapshots, ignore_conflicts=True))
    else:
        written = 0
    _run_finish(run.pk, now=now)
    return written


def _run_finish(run_id: int, *, now: datetime) -> None:
    """Close the run when every listed account has a snapshot in its bucket."""
    from apps.ops.alerts import alert_resolve

    with transaction.atomic():
        run = RiskRun.objects.select_for_update().get(pk=run_id)
        snapshots = RiskSnapshot.objects.filter(run=run)
        totals = snapshots.aggregate(n=Count("id"), v95=Sum("var_95"), v99=Sum("var_99"))
        run.chunks_done = min(run.chunks, run.chunks_done + 1)
        if run.status != RunStatus.DONE and totals["n"] >= run.accounts:
            run.status, run.finished_at = RunStatus.DONE, now
            run.total_var_95, run.total_var_99 = totals["v95"] or ZERO, totals["v99"] or ZERO
            transaction.on_commit(lambda: alert_resolve(key="job_failure:risk_assess", note="a later run finished"))
        run.save()
    _model_cache.pop("current", None)


def risk_run_fail(*, run_id: int, error: str) -> None:
    """Mark the run failed and raise the job-failure alert (the next bucket retries)."""
    from apps.ops.alerts import alert_raise
    from apps.ops.models import AlertLevel

    run = RiskRun.objects.filter(pk=run_id).first()
    RiskRun.objects.filter(pk=run_id).exclude(status=RunStatus.DONE).update(status=RunStatus.FAILED, error=error[:4000])
    bucket = f"{run.bucket:%Y-%m-%d %H:%M}" if run is not None else "?"
    alert_raise(key="job_failure:risk_assess", level=AlertLevel.HIGH,
                message=f"Risk assessment run {bucket} failed: {error[:500]}", details={"run_id": run_id})


def risk_assess_all(*, now: datetime | None = None) -> RiskRun | None:
    """The whole beat job in this process (tests, scripts): start the bucket's run and
    assess every chunk here. The Celery task spreads the chunks over workers instead."""
    plan = risk_run_start(now=now)
    if plan is None:
        return None
    try:
        for chunk in plan.chunks:
            risk_assess_chunk(run_id=plan.run.pk, user_ids=chunk, now=now)
    except Exception as exc:
        risk_run_fail(run_id=plan.run.pk, error=repr(exc))
        raise
    plan.run.refresh_from_db()
    return plan.run


def risk_snapshots_prune(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    cutoff = now - timedelta(days=float(risk_setting("RISK_SNAPSHOT_RETENTION_DAYS")))
    deleted, _ = RiskSnapshot.objects.filter(bucket__lt=cutoff).delete()
    RiskRun.objects.filter(bucket__lt=cutoff).delete()
    return deleted


# ------------------------------------------------------------- pre-trade


_EXPOSURE_SQL: dict[str, str] = {}


def exposure_sql(part: str = "all") -> str:
    """One round trip for the pre-trade reads of one or more users: settle-asset balance ('B'),
    open positions ('P') and open non-reducing orders per contract and side ('O'), each row with
    its contract's symbol and size, and the user's id last (a user with no balance has no 'B'
    row: equity 0). `part="accounts"`: the 'B' and 'P' rows only (order entry reads the open
    orders with its own aggregate, `apps.trading.services`). Raw SQL because the ORM's query
    compilation cost more than the queries; typed parameters (`exposure_params`) so order entry
    can read it with its own (server-side binding)."""
    if not _EXPOSURE_SQL:
        from apps.ledger.models import Account, Asset, Balance
        from apps.positions.models import Position

        t = {m: m._meta.db_table for m in (Balance, Account, Asset, Position, Order, Contract)}
        accounts = f"""
            SELECT 'B', NULL, NULL, NULL, SUM(b.amount), NULL, NULL, a.user_id
              FROM {t[Balance]} b JOIN {t[Account]} a ON a.id = b.account_id JOIN {t[Asset]} s ON s.id = b.asset_id
             WHERE a.user_id = ANY(%(users)s::bigint[]) AND a.kind = ANY(%(kinds)s::text[]) AND s.code = %(asset)s::text
             GROUP BY a.user_id
            UNION ALL
            SELECT 'P', p.contract_id, c.symbol, c.contract_size, p.size, p.entry_price, NULL, p.user_id
              FROM {t[Position]} p JOIN {t[Contract]} c ON c.id = p.contract_id
             WHERE p.user_id = ANY(%(users)s::bigint[]) AND p.size <> 0"""
        # The open orders are summed per (user, contract, side) before their contract is joined:
        # one contract lookup per group, not per open order (an account may have hundreds).
        orders = f"""
            SELECT 'O', g.contract_id, c.symbol, c.contract_size, g.open, NULL, g.side, g.user_id
              FROM (SELECT o.user_id, o.contract_id, o.side, SUM(o.quantity - o.executed_qty) AS open
                      FROM {t[Order]} o
                     WHERE o.user_id = ANY(%(users)s::bigint[]) AND o.status IN ({text_literals(OPEN_STATUSES)})
                       AND NOT o.reduce_only AND NOT o.close_position
                     GROUP BY o.user_id, o.contract_id, o.side) AS g
              JOIN {t[Contract]} c ON c.id = g.contract_id"""
        _EXPOSURE_SQL.update(accounts=accounts, all=accounts + "\n            UNION ALL" + orders)
    return _EXPOSURE_SQL[part]


def exposure_params(*, users) -> dict:
    """The parameters of `exposure_sql` for these users."""
    from apps.ledger.models import USER_KINDS

    return {"users": sorted({user.pk for user in users}), "kinds": [str(k) for k in USER_KINDS], "asset": SETTLE_ASSET}


class _ContractRef(NamedTuple):
    """What the price lookup reads of a contract (no model instance per row)."""

    pk: int
    symbol: str


def _exposure_for_pretrade(*, user, contract: Contract, mark: Decimal | None = None, rows=None
                           ) -> tuple[Decimal, dict[str, Decimal], dict]:
    """(equity, signed position size per symbol in base units, {buys, sells, marks}) of
    one user: one SQL round trip (none when `rows`, the rows of `exposure_sql` the caller
    read under its locks, are given) and one Redis MGET for the marks (none when `mark`,
    the contract's mark the caller has just read, is given and no other symbol is involved)."""
    from django.db import connection

    from apps.marketdata.selectors import price_latest_many

    if rows is None:
        with connection.cursor() as cursor:
            cursor.execute(exposure_sql(), exposure_params(users=[user]))
            rows = [row[:7] for row in cursor.fetchall()]
    equity = ZERO
    contracts = {contract.pk: contract}
    for kind, contract_id, symbol, _, _, _, _ in rows:
        if kind != "B" and contract_id not in contracts:
            contracts[contract_id] = _ContractRef(contract_id, symbol)
    if mark is not None:
        del contracts[contract.pk]
    marks = price_latest_many(contracts=list(contracts.values()))
    mark_of = {s: (snap.mark_price if snap is not None else None) for s, snap in marks.items()}
    if mark is not None:
        mark_of[contract.symbol] = mark
    size: dict[str, Decimal] = {}
    buys: dict[str, Decimal] = {}
    sells: dict[str, Decimal] = {}
    for kind, _, symbol, contract_size, amount, entry, side in rows:
        if kind == "B":
            equity += amount
        elif kind == "P":
            mark = mark_of.get(symbol) or entry
            mark_of[symbol] = mark
            equity += amount * (mark - entry) * contract_size
            size[symbol] = amount * contract_size
        else:
            target = buys if side == Side.BUY else sells
            target[symbol] = target.get(symbol, ZERO) + (amount or ZERO) * contract_size
    return equity, size, {"buys": buys, "sells": sells, "marks": mark_of}


def _worst_case(size: Decimal, buys: Decimal, sells: Decimal) -> Decimal:
    long_side, short_side = size + buys, size - sells
    return long_side if abs(long_side) >= abs(short_side) else short_side


@dataclass(frozen=True)
class PretradeResult:
    score_before: float
    score_after: float
    level_before: RiskLevel | None
    level_after: RiskLevel
    reject: bool


def risk_pretrade_evaluate(*, user, contract: Contract, side: str, quantity: Decimal, price: Decimal,
                           mark: Decimal | None = None) -> PretradeResult:
    """The numbers behind `risk_pretrade_check` (also for ops and tests)."""
    return _pretrade(user=user, contract=contract, side=side, quantity=quantity, price=price, mark=mark, lazy=False)


def _pretrade(*, user, contract: Contract, side: str, quantity: Decimal, price: Decimal, mark: Decimal | None,
              lazy: bool, rows=None) -> PretradeResult:
    """`lazy`: the score before the order only when the one after it is above the accepted
    level (it decides nothing otherwise); then the result's before fields are NaN / None."""
    if side not in (Side.BUY, Side.SELL):
        raise ValueError(f"side must be BUY or SELL, got {side!r}")
    quantity, price = Decimal(quantity), Decimal(price)
    if not quantity > 0 or not price > 0:
        raise ValueError("quantity and price must be positive")
    equity, sizes, extra = _exposure_for_pretrade(user=user, contract=contract, mark=mark, rows=rows)
    buys, sells, marks = extra["buys"], extra["sells"], extra["marks"]
    symbols = set(sizes) | set(buys) | set(sells) | {contract.symbol}
    model = model_with_symbols(market_model_current(), sorted(symbols))
    qty = quantity * contract.contract_size
    before = np.zeros(len(model.symbols))
    after = np.zeros(len(model.symbols))
    for s in symbols:
        at = float(marks.get(s) or (price if s == contract.symbol else 0))
        size, b, sl = sizes.get(s, ZERO), buys.get(s, ZERO), sells.get(s, ZERO)
        before[model.index[s]] = float(_worst_case(size, b, sl)) * at
        if s == contract.symbol:
            b, sl = (b + qty, sl) if side == Side.BUY else (b, sl + qty)
        after[model.index[s]] = float(_worst_case(size, b, sl)) * at
    calibration = _calibration()
    score_after, level_after = parametric_score(model, after, float(equity), calibration=calibration,
                                                thresholds=RISK_LEVEL_THRESHOLDS)
    if lazy and not level_after > _max_level():
        return PretradeResult(float("nan"), score_after, None, level_after, False)
    score_before, level_before = parametric_score(model, before, float(equity), calibration=calibration,
                                                  thresholds=RISK_LEVEL_THRESHOLDS)
    position = sizes.get(contract.symbol, ZERO)
    signed = qty if side == Side.BUY else -qty
    reduces = position != 0 and abs(position + signed) < abs(position) and (position + signed) * position >= 0
    reject = level_after > _max_level() and score_after >= score_before and not reduces
    return PretradeResult(score_before, score_after, level_before, level_after, reject)


def risk_pretrade_check(*, user, contract: Contract, side: str, quantity: Decimal, price: Decimal,
                        mark: Decimal | None = None, rows=None) -> None:
    """Refuse an order that would push the account's risk level above the accepted level.

    Parametric and cheap (no Monte Carlo): the current market model (the latest run's
    one-day covariance, cached in-process for RISK_MODEL_CACHE_SECONDS), the account's
    equity, positions at mark and open orders read now (three indexed queries and one
    Redis MGET), then the closed-form normal VaR z·sqrt(wᵀΣw) (what the snapshots'
    10,000-path Monte Carlo converges to), the stress scenarios, concentration and the
    calibrated score, before and after the order. Exposure per symbol is the worst case
    of the open orders: position + open buys or position − open sells, whichever is
    larger in size, so resting orders cannot add up past the gate one by one; call it
    before the new order is stored. ``quantity`` is in contracts, ``price`` is used only
    when the contract has no mark; ``mark``, when given, is the contract's mark price the
    caller has just read (order entry), so it is not read again; ``rows``, when given, are
    the rows of the exposure query the caller read under its locks (order entry reads them
    with its own, in one statement). Raises `ExchangeError`
    RISK_TOO_HIGH (-2030, "风险过高 (risk too high) ...") when the level after the order is above
    RISK_PRETRADE_MAX_LEVEL (default HIGH, i.e. CRITICAL is refused) and the order does
    not lower the score; an order that only reduces a position is never refused.
    Disabled by RISK_PRETRADE_ENABLED = False.
    """
    if not risk_setting("RISK_PRETRADE_ENABLED"):
        return
    result = _pretrade(user=user, contract=contract, side=side, quantity=quantity, price=price, mark=mark, lazy=True,
                       rows=rows)
    if result.reject:
        raise ExchangeError(
            f"{RISK_TOO_HIGH} (risk too high): this order would raise the account's risk level to "
            f"{result.level_after.name} (score {result.score_after:.0f}/100, accepted up to {_max_level().name}). "
            "Reduce the order size, add margin or hedge.",
            code=ErrorCode.RISK_TOO_HIGH,
        )


# ------------------------------------------------------------- margin


@dataclass(frozen=True)
class MarginAdjustment:
    """The risk adjustments of one contract's margin, from its latest hourly estimate.

    Initial margin rate = 1/leverage × ``multiplier`` (= 1 + ``factor``: +10%/+20% for
    daily volatility above 5%/10%, +10%/+30% for a liquidity score below 0.8/0.5);
    maintenance rate += ``maintenance_addon`` (0 / 0.1% / 0.2% / 0.5% for daily
    volatility below 2% / 5% / 10% / above). No estimate yet: no adjustment.
    """

    symbol: str
    factor: Decimal
    maintenance_addon: Decimal
    daily_volatility: float | None
    liquidity_score: float | None
    computed_at: datetime | None

    @property
    def multiplier(self) -> Decimal:
        return Decimal(1) + self.factor


_margin_cache: dict[int, tuple[float, MarginAdjustment]] = {}


def risk_margin_adjustment(*, contract: Contract) -> MarginAdjustment:
    """The contract's current margin adjustments (one indexed query, then cached
    in-process for RISK_MODEL_CACHE_SECONDS; the estimate itself is hourly)."""
    now = time.monotonic()
    hit = _margin_cache.get(contract.pk)
    if hit is not None and now - hit[0] < float(risk_setting("RISK_MODEL_CACHE_SECONDS")):
        return hit[1]
    row = VolatilityEstimate.objects.filter(contract_id=contract.pk).order_by("-bucket").first()
    if row is None:
        adj = MarginAdjustment(contract.symbol, ZERO, ZERO, None, None, None)
    else:
        adj = MarginAdjustment(contract.symbol, row.initial_margin_factor, row.maintenance_addon,
                               row.daily_volatility_24h, row.liquidity_score, row.computed_at)
    _margin_cache[contract.pk] = (now, adj)
    return adj


def risk_initial_margin_rate(*, contract: Contract, leverage: int) -> Decimal:
    """Risk-adjusted initial margin rate: 1/leverage × (1 + volatility and liquidity
    adjustment), exact Decimal (the ledger quantizes amounts, not rates)."""
    if int(leverage) < 1:
        raise ValueError("leverage must be >= 1")
    return Decimal(1) / Decimal(int(leverage)) * risk_margin_adjustment(contract=contract).multiplier


def risk_maintenance_margin_addon(*, contract: Contract) -> Decimal:
    """What to add to the contract's tier maintenance rate (the seed's volatility add-on)."""
    return risk_margin_adjustment(contract=contract).maintenance_addon
