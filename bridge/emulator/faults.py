"""Switchable faults and the per-request decisions they produce; pure logic, no I/O.

The app asks a :class:`FaultInjector` three questions per invocation, in this order:

1. :meth:`~FaultInjector.decide` before the body is parsed: latency (the time the
   answer takes, whatever it is), then the
   first matching of outage (503), ``fail_next`` (``fail_status``), connection reset,
   random 429.
2. :meth:`~FaultInjector.check_payload` on the raw body size: over
   ``max_payload_bytes`` answers ``oversize_status`` (413 by default; Databricks' real
   status is unconfirmed, so a test can switch it to 400).
3. :meth:`~FaultInjector.check_poison` on the parsed rows: the first row whose
   ``poison_field`` is truthy fails the whole request with 400, naming the row.

Random draws come from one ``random.Random(seed)`` and happen only when a rate is
non-zero, so a given seed and request sequence always yields the same faults.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

_MB = 1024 * 1024
_ERROR_CODES = {
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Only these statuses carry Retry-After, as the Databricks SDK only honours it there.
_RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Faults:
    """The faults switched on; the defaults inject nothing."""

    latency_ms: float = 0.0
    rate_429: float = 0.0
    retry_after_s: int | None = None
    fail_next: int = 0
    fail_status: int = 503
    outage_until: float | None = None  # deadline on the emulator's clock
    poison_field: str | None = "_poison"
    max_payload_bytes: int = 16 * _MB
    oversize_status: int = 413
    reset_connection_rate: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Rejection:
    """An error response the app should send instead of scoring."""

    status: int
    error_code: str
    message: str
    retry_after_s: int | None = None


@dataclass(frozen=True)
class Decision:
    """What to do with one invocation before its body is parsed."""

    delay_s: float = 0.0
    drop_connection: bool = False
    rejection: Rejection | None = None


def _is_number(value: object, low: float, high: float) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and low <= value <= high


def _is_int(value: object, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def _validators() -> Mapping[str, Callable[[object], bool]]:
    inf = float("inf")
    return {
        "latency_ms": lambda v: _is_number(v, 0, inf),
        "rate_429": lambda v: _is_number(v, 0, 1),
        "retry_after_s": lambda v: v is None or _is_int(v, 0, 86_400),
        "fail_next": lambda v: _is_int(v, 0, 1_000_000_000),
        "fail_status": lambda v: _is_int(v, 400, 599),
        "outage_until": lambda v: v is None or _is_number(v, -inf, inf),
        "poison_field": lambda v: v is None or isinstance(v, str),
        "max_payload_bytes": lambda v: _is_int(v, 0, 2**62),
        "oversize_status": lambda v: _is_int(v, 400, 599),
        "reset_connection_rate": lambda v: _is_number(v, 0, 1),
        "seed": lambda v: _is_int(v, -(2**63), 2**63),
    }


def merge_faults(faults: Faults, patch: Mapping[str, object], now: float) -> Faults:
    """``faults`` with ``patch`` applied; ValueError naming any unknown key or bad value.

    Besides the field names, ``outage_for_s`` sets ``outage_until`` to ``now`` plus that
    many seconds, because remote callers cannot read the emulator's clock.
    """
    changes = dict(patch)
    if "outage_for_s" in changes:
        duration = changes.pop("outage_for_s")
        if not _is_number(duration, 0, float("inf")):
            raise ValueError("outage_for_s must be a non-negative number")
        changes["outage_until"] = now + cast(float, duration)
    validators = _validators()
    unknown = sorted(set(changes) - set(validators))
    if unknown:
        raise ValueError(f"unknown fault(s): {', '.join(unknown)}")
    for name, value in changes.items():
        if not validators[name](value):
            raise ValueError(f"invalid value for fault {name}: {value!r}")
    return dataclasses.replace(faults, **changes)  # type: ignore[arg-type]


class FaultInjector:
    """Holds the current :class:`Faults` and its RNG, and decides each request's fate."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)

    def update(self, patch: Mapping[str, object], now: float) -> Faults:
        """Merge ``patch`` (see :func:`merge_faults`); a new ``seed`` restarts the RNG."""
        self.faults = merge_faults(self.faults, patch, now)
        if "seed" in patch:
            self._rng = random.Random(self.faults.seed)
        return self.faults

    def reset(self) -> None:
        """Switch every fault off and restart the RNG."""
        self.faults = Faults()
        self._rng = random.Random(self.faults.seed)

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def _reject(self, status: int, message: str) -> Rejection:
        retry_after = self.faults.retry_after_s if status in _RETRY_AFTER_STATUSES else None
        code = _ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
        return Rejection(status, code, message, retry_after)

    def decide(self, now: float) -> Decision:
        """The pre-parse decision for one invocation arriving at ``now``."""
        faults = self.faults
        delay_s = faults.latency_ms / 1000
        if faults.outage_until is not None and now < faults.outage_until:
            return Decision(delay_s, rejection=self._reject(503, "The endpoint is unavailable."))
        if faults.fail_next > 0:
            self.faults = dataclasses.replace(faults, fail_next=faults.fail_next - 1)
            message = f"Injected failure ({faults.fail_next - 1} more queued)."
            return Decision(delay_s, rejection=self._reject(faults.fail_status, message))
        if self._chance(faults.reset_connection_rate):
            return Decision(delay_s, drop_connection=True)
        if self._chance(faults.rate_429):
            message = "Exceeded workspace rate limit for serving endpoint."
            return Decision(delay_s, rejection=self._reject(429, message))
        return Decision(delay_s)

    def check_payload(self, size: int) -> Rejection | None:
        """A rejection if a body of ``size`` bytes is over the payload limit."""
        limit = self.faults.max_payload_bytes
        if size <= limit:
            return None
        message = f"Request payload of {size} bytes exceeds the limit of {limit} bytes."
        return Rejection(self.faults.oversize_status, "BAD_REQUEST", message)

    def check_poison(self, rows: Sequence[Mapping[str, object]]) -> Rejection | None:
        """A 400 naming the first row whose poison field is truthy, if any."""
        field = self.faults.poison_field
        if field is None:
            return None
        for index, row in enumerate(rows):
            if row.get(field):
                message = f"Model failed to score row {index}: field '{field}' is set."
                return Rejection(400, "BAD_REQUEST", message)
        return None
