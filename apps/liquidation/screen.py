"""The liquidation screen: every open position judged against a set of mark prices at once.

`ScreenBook.load()` reads all open positions with their margin backing in two
set-based queries into NumPy arrays (positions; cross wallets per user and asset), and
the contracts' margin tiers into padded per-contract arrays. `ScreenBook.screen(marks)`
then computes, vectorized, each position's notional, maintenance margin (its tier by
`searchsorted`-style comparison against the contract's caps) and unrealized PnL, sums
the cross ones per (user, asset) with `bincount`, and returns every cross account and
isolated position whose equity / maintenance is at or below a ratio (100% for
liquidation, 150% for margin calls). Floats are fine here: the screen only nominates;
each nominee is judged again exactly (Decimal, `status.py`) before anything happens.

Triggers: the beat sweep (`liquidation-sweep`, every 2 s) reloads the arrays and
screens at the latest marks; with LIQUIDATION_SCREEN_ON_MARK the process that
publishes marks (the pricefeed) also screens after each mark, on arrays at most
LIQUIDATION_SCREEN_MIN_INTERVAL_SECONDS old.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from django.db import connection

from apps.contracts.models import Contract
from apps.positions.tiers import contract_tiers

from .conf import liquidation_setting

logger = logging.getLogger(__name__)
BAND = 1e13  # notional band per contract in the flat tier search (far above any notional)


@dataclass
class ScreenResult:
    cross: list[tuple[int, int]] = field(default_factory=list)  # (user id, asset id)
    isolated: list[tuple[int, int]] = field(default_factory=list)  # (user id, contract id)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.cross) + len(self.isolated)


@dataclass
class ScreenBook:
    """Open positions as arrays (one row per position) plus per-contract tiers and per-group wallets."""

    contract_ids: np.ndarray  # contracts in column order
    contract_index: np.ndarray  # per position: index into contract_ids
    user_id: np.ndarray
    size: np.ndarray
    entry: np.ndarray
    isolated: np.ndarray  # bool
    isolated_margin: np.ndarray
    group: np.ndarray  # per position: cross group index (meaningless for isolated rows)
    group_user: np.ndarray
    group_asset: np.ndarray
    group_wallet: np.ndarray  # cross wallet (WALLET + ORDER_MARGIN + RECEIVABLE) per group
    contract_size: np.ndarray  # per contract
    caps: np.ndarray  # contracts × tiers, +inf padded
    rates: np.ndarray
    amounts: np.ndarray
    tier_count: np.ndarray
    loaded_at: float = 0.0
    contracts: list = field(default_factory=list)  # Contract rows (id, symbol, size) when loaded

    @property
    def positions(self) -> int:
        return len(self.size)

    @classmethod
    def from_arrays(cls, *, contracts: list[tuple[int, float, list]], contract_id, user_id, size, entry, isolated,
                    isolated_margin, asset_id, wallets: dict[tuple[int, int], float]) -> "ScreenBook":
        """contracts: (id, contract size, [(cap, rate, amount), ...]); wallets: (user, asset) -> cross wallet."""
        ids = np.array([c[0] for c in contracts], dtype=np.int64)
        order = np.argsort(ids)
        index = order[np.searchsorted(ids[order], contract_id)] if len(ids) else np.zeros(0, np.int64)
        width = max((len(c[2]) for c in contracts), default=1)
        caps = np.full((len(ids), width), np.inf)
        rates = np.zeros((len(ids), width))
        amounts = np.zeros((len(ids), width))
        for i, (_, _, tiers) in enumerate(contracts):
            for j, (cap, rate, amount) in enumerate(tiers):
                caps[i, j], rates[i, j], amounts[i, j] = cap, rate, amount
            if tiers:
                caps[i, len(tiers) - 1] = np.inf  # beyond the last cap it is still the last tier
        key = user_id.astype(np.int64) * (1 << 20) + asset_id.astype(np.int64)
        groups, inverse = np.unique(key, return_inverse=True)
        group_user = groups >> 20
        group_asset = groups & ((1 << 20) - 1)
        group_wallet = np.array([wallets.get((int(u), int(a)), 0.0) for u, a in zip(group_user, group_asset)])
        return cls(contract_ids=ids, contract_index=index.astype(np.int64), user_id=user_id.astype(np.int64),
                   size=size, entry=entry, isolated=isolated.astype(bool), isolated_margin=isolated_margin,
                   group=inverse.astype(np.int64), group_user=group_user, group_asset=group_asset,
                   group_wallet=group_wallet, contract_size=np.array([c[1] for c in contracts]), caps=caps,
                   rates=rates, amounts=amounts, tier_count=np.array([len(c[2]) for c in contracts]),
                   loaded_at=time.monotonic())

    @classmethod
    def load(cls) -> "ScreenBook":
        # One statement, one snapshot: the positions (contract id set), then the cross wallets
        # (contract id NULL) of their holders.
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT p.contract_id, p.user_id, p.size::float8, p.entry_price::float8,
                       p.margin_type = 'ISOLATED', COALESCE(b.amount, 0)::float8, c.settle_asset_id
                FROM positions_position p
                JOIN contracts_contract c ON c.id = p.contract_id
                LEFT JOIN ledger_account a
                       ON a.kind = 'ISOLATED_MARGIN' AND a.user_id = p.user_id AND a.contract_id = p.contract_id
                LEFT JOIN ledger_balance b ON b.account_id = a.id AND b.asset_id = c.settle_asset_id
                WHERE p.size <> 0
                UNION ALL
                SELECT NULL, a.user_id, NULL, NULL, NULL, SUM(b.amount)::float8, b.asset_id
                FROM ledger_balance b JOIN ledger_account a ON a.id = b.account_id
                WHERE a.kind IN ('WALLET', 'ORDER_MARGIN', 'RECEIVABLE')
                  AND a.user_id IN (SELECT user_id FROM positions_position WHERE size <> 0 AND margin_type = 'CROSS')
                GROUP BY a.user_id, b.asset_id
                """
            )
            rows, wallets = [], {}
            for row in cursor.fetchall():
                if row[0] is None:
                    wallets[(row[1], row[6])] = row[5]
                else:
                    rows.append(row)
        columns = list(zip(*rows)) if rows else [()] * 7
        contract_id = np.array(columns[0], dtype=np.int64)
        contracts, loaded = [], []
        # Only what the screen and the marks read (the id for the tiers, the symbol, the size).
        for contract in (Contract.objects.filter(pk__in=set(columns[0])).only("id", "symbol", "contract_size")
                         .order_by("pk")):
            tiers = [(float(t.notional_cap), float(t.maintenance_rate), float(t.maintenance_amount))
                     for t in contract_tiers(contract)]
            contracts.append((contract.pk, float(contract.contract_size), tiers))
            loaded.append(contract)
        book = cls.from_arrays(
            contracts=contracts, contract_id=contract_id, user_id=np.array(columns[1], dtype=np.int64),
            size=np.array(columns[2], dtype=float), entry=np.array(columns[3], dtype=float),
            isolated=np.array(columns[4], dtype=bool), isolated_margin=np.array(columns[5], dtype=float),
            asset_id=np.array(columns[6], dtype=np.int64), wallets=wallets)
        book.contracts = loaded
        return book

    def marks(self) -> dict[int, float]:
        """`latest_marks` of the book's contracts (those loaded with it: no second contract query)."""
        return latest_marks(self.contract_ids, contracts=self.contracts)

    def _tier_index(self):
        """Flat per-contract tier tables: banded caps (all but the last tier's), and rates/amounts."""
        cached = getattr(self, "_tiers_flat", None)
        if cached is None:
            keys, starts, rates, amounts, offsets = [], [], [], [], []
            for i in range(len(self.contract_ids)):
                count = int(self.tier_count[i])
                starts.append(len(keys))
                keys.extend(i * BAND + self.caps[i, j] for j in range(max(0, count - 1)))
                offsets.append(len(rates))
                rates.extend(self.rates[i, :max(1, count)])
                amounts.extend(self.amounts[i, :max(1, count)])
            cached = (np.array(keys, dtype=float), np.array(starts, dtype=np.int64), np.array(rates, dtype=float),
                      np.array(amounts, dtype=float))
            self._tier_offsets = np.array(offsets, dtype=np.int64)
            self._tiers_flat = cached
        return cached

    def mark_vector(self, marks: dict[int, float]) -> np.ndarray:
        """Per-contract marks in column order (NaN where a contract has none: its positions are skipped)."""
        return np.array([marks.get(int(c), np.nan) for c in self.contract_ids], dtype=float)

    def screen(self, marks: dict[int, float], *, ratio: float = 1.0) -> ScreenResult:
        """Scopes whose equity / maintenance margin is at or below `ratio` (plus the float tolerance)."""
        started = time.perf_counter()
        result = ScreenResult()
        if not self.positions:
            return result
        limit = ratio + float(liquidation_setting("LIQUIDATION_SCREEN_TOLERANCE"))
        ci = self.contract_index
        mark = self.mark_vector(marks)[ci]
        priced = ~np.isnan(mark)
        mark = np.where(priced, mark, self.entry)
        qty = self.size * self.contract_size[ci]
        notional = np.abs(qty) * mark
        # Tier: one searchsorted over every contract's caps, each contract's shifted into its own
        # band (notional + index × BAND); the maintenance margin is continuous at a cap, so the
        # float rounding of the shifted key near a cap changes nothing that matters.
        keys, starts, rates, amounts = self._tier_index()
        slot = np.searchsorted(keys, ci * BAND + notional, side="right")
        tier = np.minimum(slot - starts[ci], self.tier_count[ci] - 1).clip(min=0)
        flat = self._tier_offsets[ci] + tier
        maintenance = np.maximum(0.0, notional * rates[flat] - amounts[flat])
        upnl = (mark - self.entry) * qty
        iso = self.isolated & priced
        iso_hit = iso & (maintenance > 0) & (self.isolated_margin + upnl <= limit * maintenance)
        cross = ~self.isolated
        groups = len(self.group_user)
        g_upnl = np.bincount(self.group[cross], weights=upnl[cross], minlength=groups)
        g_mm = np.bincount(self.group[cross], weights=maintenance[cross], minlength=groups)
        g_hit = (g_mm > 0) & (self.group_wallet + g_upnl <= limit * g_mm)
        hit_groups = np.flatnonzero(g_hit)
        result.cross = list(zip(self.group_user[hit_groups].tolist(), self.group_asset[hit_groups].tolist()))
        rows = np.flatnonzero(iso_hit)
        result.isolated = list(zip(self.user_id[rows].tolist(), self.contract_ids[ci[rows]].tolist()))
        result.seconds = time.perf_counter() - started
        return result

    def screen_loop(self, marks: dict[int, float], *, ratio: float = 1.0) -> ScreenResult:
        """The same judgement, one position at a time in plain Python: the benchmark's baseline."""
        started = time.perf_counter()
        limit = ratio + float(liquidation_setting("LIQUIDATION_SCREEN_TOLERANCE"))
        result = ScreenResult()
        mark_of = {int(c): marks.get(int(c)) for c in self.contract_ids}
        tiers = [[(self.caps[i, j], self.rates[i, j], self.amounts[i, j]) for j in range(self.tier_count[i])]
                 for i in range(len(self.contract_ids))]
        sums: dict[int, list[float]] = {}
        for k in range(self.positions):
            i = int(self.contract_index[k])
            mark = mark_of[int(self.contract_ids[i])]
            if mark is None:
                if self.isolated[k]:
                    continue
                mark = float(self.entry[k])
            qty = float(self.size[k]) * float(self.contract_size[i])
            notional = abs(qty) * mark
            rate, amount = tiers[i][-1][1], tiers[i][-1][2]
            for cap, r, a in tiers[i]:
                if notional < cap:
                    rate, amount = r, a
                    break
            maintenance = max(0.0, notional * rate - amount)
            upnl = (mark - float(self.entry[k])) * qty
            if self.isolated[k]:
                if maintenance > 0 and float(self.isolated_margin[k]) + upnl <= limit * maintenance:
                    result.isolated.append((int(self.user_id[k]), int(self.contract_ids[i])))
            else:
                acc = sums.setdefault(int(self.group[k]), [0.0, 0.0])
                acc[0] += upnl
                acc[1] += maintenance
        for g, (upnl, maintenance) in sorted(sums.items()):
            if maintenance > 0 and float(self.group_wallet[g]) + upnl <= limit * maintenance:
                result.cross.append((int(self.group_user[g]), int(self.group_asset[g])))
        result.seconds = time.perf_counter() - started
        return result


def latest_marks(contract_ids, *, contracts=None) -> dict[int, float]:
    """contract id -> latest mark; `contracts`: the Contract rows of these ids, when already loaded."""
    from apps.marketdata.selectors import price_latest_many

    if contracts is None:
        contracts = list(Contract.objects.filter(pk__in=[int(c) for c in contract_ids]))
    snapshots = price_latest_many(contracts=contracts)
    return {c.pk: float(snapshots[c.symbol].mark_price) for c in contracts if snapshots.get(c.symbol) is not None}


_book: ScreenBook | None = None


def screen_on_mark(contract, snapshot) -> None:
    """Mark listener (pricefeed process, LIQUIDATION_SCREEN_ON_MARK): screen, then hand nominees to a worker."""
    global _book
    min_age = float(liquidation_setting("LIQUIDATION_SCREEN_MIN_INTERVAL_SECONDS"))
    if _book is None or time.monotonic() - _book.loaded_at >= min_age:
        _book = ScreenBook.load()
    marks = _book.marks()
    marks[contract.pk] = float(snapshot.mark_price)
    hits = _book.screen(marks, ratio=float(liquidation_setting("LIQUIDATION_WARNING_RATIO")))
    if hits.count:
        from .tasks import liquidation_nominees_task

        liquidation_nominees_task.delay(cross=hits.cross, isolated=hits.isolated)
