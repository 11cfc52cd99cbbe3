"""Price anomaly rules and the per-symbol pause / smoothing state they drive.

`AnomalyDetector.observe` checks one new observation of a symbol (the candidate
mark, the volume across venues and the relative bid/ask spread) against its recent
history: a price more than 5% from the mean of the last 5 observed prices, a
volume more than 3x the mean of the last 10, a spread wider than 2%. Jumps over
10% and volumes over 5x are HIGH: mark updates are paused for 5 minutes (the
state reads "mark updates paused until ...") and the check carries an emergency
flag. Other anomalies are MEDIUM: the smoothing factor the mark calculator should
use is doubled for 5 minutes and the check carries a warning flag. Each anomaly is
returned as an `AnomalyRecord` to be stored and alerted on; the detector keeps only
the small rolling state it needs. History holds the *observed* candidates, not
only published marks, so a real move of more than 10% is absorbed into the
reference within a few observations instead of pausing the mark forever. A new
HIGH anomaly during a pause extends it; `lift_pause` is the operator's way out.
Nothing here reads the clock: every call takes the instant as an argument.
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .quotes import CALC_CONTEXT, dsum, ms_to_datetime, to_decimal, to_ms

__all__ = [
    "AnomalyCheck",
    "AnomalyConfig",
    "AnomalyDetector",
    "AnomalyRecord",
    "AnomalyType",
    "DetectorState",
    "PauseLift",
    "Severity",
]


class AnomalyType(str, enum.Enum):
    PRICE_JUMP = "price_jump"
    VOLUME_SPIKE = "volume_spike"
    SPREAD_WIDENING = "spread_widening"


class Severity(str, enum.Enum):
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True)
class AnomalyConfig:
    """Thresholds (strict: a value equal to a threshold is not an anomaly)."""

    jump_medium: Decimal = Decimal("0.05")
    jump_high: Decimal = Decimal("0.10")
    jump_window: int = 5
    volume_medium: Decimal = Decimal("3")
    volume_high: Decimal = Decimal("5")
    volume_window: int = 10
    spread_medium: Decimal = Decimal("0.02")
    pause_ms: int = 300_000
    smoothing_factor: int = 2
    smoothing_ms: int = 300_000
    # Observations needed before a rule applies (a mean of one point is noise).
    min_price_history: int = 5
    min_volume_history: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.jump_medium <= self.jump_high:
            raise ValueError("need 0 < jump_medium <= jump_high")
        if not 1 < self.volume_medium <= self.volume_high:
            raise ValueError("need 1 < volume_medium <= volume_high")
        if not 1 <= self.min_price_history <= self.jump_window:
            raise ValueError("need 1 <= min_price_history <= jump_window")
        if not 1 <= self.min_volume_history <= self.volume_window:
            raise ValueError("need 1 <= min_volume_history <= volume_window")
        if self.smoothing_factor < 1 or self.pause_ms <= 0 or self.smoothing_ms < 0:
            raise ValueError("smoothing_factor >= 1, pause_ms > 0, smoothing_ms >= 0")


@dataclass(frozen=True, slots=True)
class AnomalyRecord:
    """One detected anomaly, ready to store and to alert on.

    `value` is the measured ratio (relative jump, volume multiple, relative
    spread), `threshold` the threshold it crossed for this severity, `observed`
    the raw input (price, volume, spread) and `reference` the mean it was
    compared with (None for the spread rule). `at` is epoch ms.
    """

    type: AnomalyType
    severity: Severity
    symbol: str
    at: int
    value: Decimal
    threshold: Decimal
    observed: Decimal
    reference: Decimal | None

    @property
    def message(self) -> str:
        what = {
            AnomalyType.PRICE_JUMP: f"price jump {self.value:.2%} vs mean {self.reference}",
            AnomalyType.VOLUME_SPIKE: f"volume {self.value:.2f}x the mean {self.reference}",
            AnomalyType.SPREAD_WIDENING: f"spread {self.value:.2%}",
        }[self.type]
        return f"{self.symbol} {self.severity.value.upper()} {what} (threshold {self.threshold})"

    def to_audit(self) -> dict:
        return {
            "type": self.type.value,
            "severity": self.severity.value,
            "symbol": self.symbol,
            "at": self.at,
            "value": str(self.value),
            "threshold": str(self.threshold),
            "observed": str(self.observed),
            "reference": None if self.reference is None else str(self.reference),
        }


@dataclass(frozen=True, slots=True)
class DetectorState:
    """What the detector currently imposes on a symbol's mark."""

    symbol: str
    at: int
    paused_until: int | None
    smoothing: int
    smoothing_until: int | None

    @property
    def paused(self) -> bool:
        return self.paused_until is not None

    def describe(self) -> str:
        parts = []
        if self.paused_until is not None:
            parts.append(f"mark updates paused until {ms_to_datetime(self.paused_until).isoformat()}")
        if self.smoothing > 1 and self.smoothing_until is not None:
            parts.append(
                f"smoothing x{self.smoothing} until {ms_to_datetime(self.smoothing_until).isoformat()}"
            )
        return "; ".join(parts) or "normal"


@dataclass(frozen=True, slots=True)
class AnomalyCheck:
    """Result of one `observe` call: the anomalies found and the state after it."""

    symbol: str
    at: int
    anomalies: tuple[AnomalyRecord, ...]
    state: DetectorState

    @property
    def emergency(self) -> bool:
        """A HIGH anomaly was found now: raise an emergency alert."""
        return any(a.severity is Severity.HIGH for a in self.anomalies)

    @property
    def warning(self) -> bool:
        """A MEDIUM anomaly was found now: raise a warning."""
        return any(a.severity is Severity.MEDIUM for a in self.anomalies)


@dataclass(frozen=True, slots=True)
class PauseLift:
    """Audit entry of an operator lifting a pause."""

    symbol: str
    at: int
    by: str | None
    was_paused_until: int | None


@dataclass(slots=True)
class _SymbolState:
    prices: deque
    volumes: deque
    paused_until: int | None = None
    smoothing_until: int | None = None


class AnomalyDetector:
    """Rolling anomaly rules per symbol; see the module docstring."""

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self._state: dict[str, _SymbolState] = {}
        self.lifts: list[PauseLift] = []

    def _symbol(self, symbol: str) -> _SymbolState:
        state = self._state.get(symbol)
        if state is None:
            state = self._state[symbol] = _SymbolState(
                prices=deque(maxlen=self.config.jump_window),
                volumes=deque(maxlen=self.config.volume_window),
            )
        return state

    # -- state queries --------------------------------------------------------------

    def state(self, symbol: str, *, now: int | datetime) -> DetectorState:
        now_ms = to_ms(now, name="now")
        st = self._state.get(symbol)
        paused_until = None
        smoothing_until = None
        if st is not None:
            if st.paused_until is not None and now_ms < st.paused_until:
                paused_until = st.paused_until
            if st.smoothing_until is not None and now_ms < st.smoothing_until:
                smoothing_until = st.smoothing_until
        return DetectorState(
            symbol=symbol,
            at=now_ms,
            paused_until=paused_until,
            smoothing=self.config.smoothing_factor if smoothing_until is not None else 1,
            smoothing_until=smoothing_until,
        )

    def is_paused(self, symbol: str, *, now: int | datetime) -> bool:
        return self.state(symbol, now=now).paused

    def smoothing_factor(self, symbol: str, *, now: int | datetime) -> int:
        """The factor the mark calculator should use now (1, or 2 after MEDIUM)."""
        return self.state(symbol, now=now).smoothing

    def restore_pause(self, symbol: str, *, until: int | datetime) -> None:
        """Re-impose a stored pause after a restart (the process keeps no other state)."""
        until_ms = to_ms(until, name="until")
        st = self._symbol(symbol)
        if st.paused_until is None or st.paused_until < until_ms:
            st.paused_until = until_ms

    def lift_pause(self, symbol: str, *, at: int | datetime, by: str | None = None, reset_history: bool = True) -> bool:
        """Ops action: resume mark updates now. Returns whether a pause was active.

        With `reset_history` (default) the price and volume history is cleared, so
        the level the operator has accepted is not immediately compared with the
        pre-move prices and paused again; the rules resume once enough new
        observations have been made.
        """
        at_ms = to_ms(at, name="at")
        st = self._state.get(symbol)
        was = None
        if st is not None:
            if st.paused_until is not None and at_ms < st.paused_until:
                was = st.paused_until
            st.paused_until = None
            if reset_history:
                st.prices.clear()
                st.volumes.clear()
        self.lifts.append(PauseLift(symbol=symbol, at=at_ms, by=by, was_paused_until=was))
        return was is not None

    # -- rules ---------------------------------------------------------------------

    def observe(
        self,
        symbol: str,
        *,
        price: Decimal,
        at: int | datetime,
        volume: Decimal | None = None,
        spread: Decimal | None = None,
    ) -> AnomalyCheck:
        """Check one observation, then add it to the history.

        `price` is the candidate mark, `volume` the volume of the quotes behind it
        (None to skip the rule), `spread` a relative bid/ask spread (None to skip).
        """
        at_ms = to_ms(at, name="at")
        price = to_decimal(price, name="price")
        cfg = self.config
        st = self._symbol(symbol)
        ctx = CALC_CONTEXT
        found: list[AnomalyRecord] = []

        if len(st.prices) >= cfg.min_price_history and price > 0:
            mean = ctx.divide(dsum(st.prices), len(st.prices))
            if mean > 0:
                jump = ctx.divide(abs(ctx.subtract(price, mean)), mean)
                record = self._grade(
                    AnomalyType.PRICE_JUMP, symbol, at_ms, jump, cfg.jump_medium, cfg.jump_high, price, mean
                )
                if record:
                    found.append(record)

        if volume is not None:
            volume = to_decimal(volume, name="volume")
            if len(st.volumes) >= cfg.min_volume_history and volume > 0:
                mean = ctx.divide(dsum(st.volumes), len(st.volumes))
                if mean > 0:
                    ratio = ctx.divide(volume, mean)
                    record = self._grade(
                        AnomalyType.VOLUME_SPIKE, symbol, at_ms, ratio, cfg.volume_medium, cfg.volume_high, volume, mean
                    )
                    if record:
                        found.append(record)

        if spread is not None:
            spread = to_decimal(spread, name="spread")
            if spread > cfg.spread_medium:
                found.append(
                    AnomalyRecord(
                        type=AnomalyType.SPREAD_WIDENING,
                        severity=Severity.MEDIUM,
                        symbol=symbol,
                        at=at_ms,
                        value=spread,
                        threshold=cfg.spread_medium,
                        observed=spread,
                        reference=None,
                    )
                )

        if price > 0:
            st.prices.append(price)
        if volume is not None and volume >= 0:
            st.volumes.append(volume)

        for record in found:
            if record.severity is Severity.HIGH:
                until = at_ms + cfg.pause_ms
                if st.paused_until is None or st.paused_until < until:
                    st.paused_until = until
            else:
                until = at_ms + cfg.smoothing_ms
                if st.smoothing_until is None or st.smoothing_until < until:
                    st.smoothing_until = until

        return AnomalyCheck(symbol=symbol, at=at_ms, anomalies=tuple(found), state=self.state(symbol, now=at_ms))

    @staticmethod
    def _grade(
        kind: AnomalyType,
        symbol: str,
        at_ms: int,
        value: Decimal,
        medium: Decimal,
        high: Decimal,
        observed: Decimal,
        reference: Decimal,
    ) -> AnomalyRecord | None:
        if value > high:
            severity, threshold = Severity.HIGH, high
        elif value > medium:
            severity, threshold = Severity.MEDIUM, medium
        else:
            return None
        return AnomalyRecord(
            type=kind,
            severity=severity,
            symbol=symbol,
            at=at_ms,
            value=value,
            threshold=threshold,
            observed=observed,
            reference=reference,
        )
