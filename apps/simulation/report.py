"""The report directory of a scenario run: index.html, PNG plots and summary.json.

Plots (matplotlib, Agg backend: no display needed) come from the recorder's time series
and, for funding, from the stored funding rates; the numbers in the HTML table and in
summary.json are the summary read from the database.
"""
from __future__ import annotations

import html
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PLOTS = (
    ("prices.png", "Index, mark and last trade price"),
    ("funding.png", "Funding rate per funding time"),
    ("open_interest.png", "Open interest"),
    ("insurance_fund.png", "Insurance fund and bad debt"),
    ("liquidations.png", "Liquidations and ADL events (cumulative)"),
    ("margin_ratios.png", "Margin-ratio distribution"),
)


def _times(values) -> list[datetime]:
    return [datetime.fromtimestamp(t, UTC) for t in values]


def _axis(ax, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))


def _save(fig, path: Path) -> None:
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _series(rows: list[dict], key: str):
    pairs = [(r["t"], r[key]) for r in rows if r[key] is not None]
    return _times([t for t, _ in pairs]), [v for _, v in pairs]


def plots_write(out: Path, *, recorder, summary: dict) -> None:
    rows = recorder.rows
    fig, ax = plt.subplots(figsize=(9, 4))
    for key, style in (("index", "-"), ("mark", "--"), ("last", ":")):
        ax.plot(*_series(rows, key), style, label=key, linewidth=1.2)
    ax.legend()
    _axis(ax, "Price (USDT)", "USDT")
    _save(fig, out / "prices.png")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    rates = summary["funding"]["rates"]
    if rates:
        times = [datetime.fromisoformat(r["time"]) for r in rates]
        values = [float(r["rate"]) * 100 for r in rates]
        ax.bar(times, values, width=timedelta(minutes=4), color=["tab:red" if v > 0 else "tab:blue" for v in values])
        for t, v in zip(times, values):
            ax.annotate(f"{v:+.4f}%", (t, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
        ax.axhline(0, color="grey", linewidth=0.8)
    else:
        ax.text(0.5, 0.5, "no funding time in the run", ha="center", transform=ax.transAxes)
    if rows:
        ax.set_xlim(_times([rows[0]["t"], rows[-1]["t"]]))
    _axis(ax, "Funding rate per funding time (longs pay when positive)", "% per interval")
    _save(fig, out / "funding.png")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(*_series(rows, "open_interest"), color="tab:purple")
    _axis(ax, "Open interest", "contracts (one side)")
    _save(fig, out / "open_interest.png")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(*_series(rows, "insurance_fund"), label="insurance fund", color="tab:green")
    ax.plot(*_series(rows, "bad_debt"), label="bad debt account", color="tab:red")
    ax.legend()
    _axis(ax, "Insurance fund and bad debt", "USDT")
    _save(fig, out / "insurance_fund.png")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for key, label in (("liquidations", "liquidations started"), ("liquidation_fills", "liquidation fills"),
                       ("adl", "ADL events")):
        ax.step(*_series(rows, key), where="post", label=label)
    ax.legend()
    _axis(ax, "Liquidations and ADL (cumulative)", "count")
    _save(fig, out / "liquidations.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    final = recorder.ratios[-1][1] if recorder.ratios else []
    left.hist(np.clip(np.array(final, dtype=float), 0.1, 1e4), bins=np.logspace(-1, 4, 31), color="tab:blue")
    left.set_xscale("log")
    left.axvline(1.0, color="red", linewidth=1, label="liquidation (100%)")
    left.axvline(1.5, color="orange", linewidth=1, label="warning (150%)")
    left.set_title(f"At the end ({len(final)} accounts with positions)")
    left.set_xlabel("equity / maintenance margin (log)")
    left.legend()
    if recorder.ratios:
        times = _times([t for t, _ in recorder.ratios])
        for q, label in ((0, "min"), (25, "p25"), (50, "median")):
            right.plot(times, [np.percentile(v, q) if v else np.nan for _, v in recorder.ratios], label=label)
        right.set_yscale("log")
        right.axhline(1.0, color="red", linewidth=1)
        right.legend()
    _axis(right, "Over time (accounts with positions)", "ratio")
    _save(fig, out / "margin_ratios.png")


def _row(name: str, value) -> str:
    return f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"


def html_write(out: Path, *, summary: dict, run: dict) -> None:
    s = summary
    liq, fund = s["liquidations"], s["funding"]
    rows = [
        ("Scenario", f"{s['scenario']} (seed {s['seed']}, {s['size']})"),
        ("What happens", run.get("description", "")),
        ("Simulated time", f"{s['simulated_start']} → {s['simulated_end']}"),
        ("Trades / volume / notional", f"{s['trades']} / {s['volume']} / {s['notional']} USDT"),
        ("Trading fees", s["trading_fees"]),
        ("Funding settlements / paid / received", f"{fund['settlements']} / {fund['paid']} / {fund['received']}"),
        ("Liquidations (accounts) / fills", f"{liq['count']} ({liq['accounts']}) / {liq['fills']}"),
        ("Clearance fees / surplus to fund / fund cover", f"{liq['clearance_fees']} / {liq['surplus_to_fund']} / "
                                                          f"{liq['fund_cover']}"),
        ("Bad debt (liquidations) / bad-debt account", f"{liq['bad_debt']} / {s['bad_debt_balance']}"),
        ("Deliveries", "; ".join(f"{d['symbol']} {d['status']} at {d['settlement_price']} ({d['positions']} "
                                 f"positions, {d['valid_minutes']} valid minutes)" for d in s["deliveries"]) or "none"),
        ("ADL events", s["adl_events"]),
        ("Insurance fund balance", s["insurance_fund_balance"]),
        ("Open interest", ", ".join(f"{k}: {v['long']}" for k, v in s["open_interest"].items())),
        ("Invariants", f"{s['invariants']['passed']} of {s['invariants']['checks']} checks passed"),
        ("Wall time", f"{run.get('wall_seconds')} s for {run.get('steps')} steps of {run.get('step_seconds')} "
                      "simulated seconds"),
        ("Orders refused at entry (by code)", json.dumps(run.get("orders_refused_by_code", {}))),
    ]
    violations = "".join(f"<li>{html.escape(name)}: {html.escape('; '.join(v))}</li>"
                         for name, v in s["invariants"]["violations"].items())
    figures = "".join(f'<figure><img src="{name}" alt="{html.escape(title)}"><figcaption>{html.escape(title)}'
                      "</figcaption></figure>" for name, title in PLOTS)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Simulation: {html.escape(s['scenario'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}}figure{{margin:1em 0}}img{{max-width:100%}}</style>
</head><body>
<h1>Simulation report: {html.escape(s['scenario'])}</h1>
<table>{''.join(_row(k, v) for k, v in rows)}</table>
{f'<h2>Invariant violations</h2><ul>{violations}</ul>' if violations else ''}
{figures}
<p>Figures are read from the database at the end of the run; the full set is in
<a href="summary.json">summary.json</a>.</p>
</body></html>
"""
    (out / "index.html").write_text(page)


def report_write(*, out: Path, summary: dict, recorder, run: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    plots_write(out, recorder=recorder, summary=summary)
    html_write(out, summary=summary, run=run)
