"""Switchable faults and endpoint states, and the per-request decisions they produce.

Pure logic, no I/O: every time-bound state is a deadline on the emulator's clock, and
every question takes ``now`` from the caller, so a test steers time with a fake clock.
The app asks a :class:`FaultInjector` these questions per invocation, in this order:

1. :meth:`~FaultInjector.route_rejection` right after authentication: a route-error
   outage answers 404 RESOURCE_DOES_NOT_EXIST (``not_found_until``), else 403
   PERMISSION_DENIED (``forbidden_until``). The endpoint GET asks it too.
2. :meth:`~FaultInjector.decide` before the body is parsed: the first matching of
   scaling from zero (503) and capacity (429), both answered at once and taking no
   slot; otherwise the invocation takes one of the endpoint's ``capacity`` slots
   (:meth:`~FaultInjector.release` it once answered) and gets the latency (the time the
   answer takes, whatever it is), then the first matching of outage (503), ``fail_next``
   (``fail_status``), connection reset, random 429.
3. :meth:`~FaultInjector.check_payload` on the raw body size: over
   ``max_payload_bytes`` answers ``oversize_status`` (413 by default; Databricks' real
   status is unconfirmed, so a test can switch it to 400).
4. :meth:`~FaultInjector.check_schema` on the parsed rows: while ``reject_all`` (or
   until ``reject_all_until``) every request is a 400 "Model is missing inputs", as
   MLflow answers when the model was redeployed with a new signature.
5. :meth:`~FaultInjector.check_poison` on the parsed rows: the first row whose
   ``poison_field`` is truthy fails the whole request with 400, naming the row.

:meth:`~FaultInjector.scaling_from_zero` tells the endpoint GET to report NOT_READY.
Random draws come from one ``random.Random(seed)`` and happen only when a rate is
non-zero, so a given seed and request sequence always yields the same faults.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

_MB = 1024 * 1024
_ERROR_CODES = {
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Only these statuses carry Retry-After, as the Databricks SDK only honours it there.
_RETRY_AFTER_STATUSES = frozenset({429, 503})
# A duration a remote caller sends (it cannot read the emulator's clock) -> its deadline.
_DURATIONS = {
    "outage_for_s": "outage_until",
    "not_found_for_s": "not_found_until",
    "forbidden_for_s": "forbidden_until",
    "scale_from_zero_s": "scale_from_zero_until",
    "reject_all_for_s": "reject_all_until",
}
# The input a redeployed model's new signature requires and no caller sends yet.
NEW_SIGNATURE_INPUT = "new_feature"


@dataclass(frozen=True)
class Faults:
    """The faults and endpoint states switched on; the defaults inject nothing.

    ``capacity`` is how many invocations of one endpoint are answered at once (None:
    unlimited), like provisioned concurrency; the ``*_until`` fields are deadlines on
    the emulator's clock.
    """

    latency_ms: float = 0.0
    rate_429: float = 0.0
    retry_after_s: int | None = None
    fail_next: int = 0
    fail_status: int = 503
    outage_until: float | None = None
    poison_field: str | None = "_poison"
    max_payload_bytes: int = 16 * _MB
    oversize_status: int = 413
    reset_connection_rate: float = 0.0
    seed: int = 0
    capacity: int | None = None
    not_found_until: float | None = None
    forbidden_until: float | None = None
    scale_from_zero_until: float | None = None
    reject_all: bool = False
    reject_all_until: float | None = None


@dataclass(frozen=True)
class Rejection:
    """An error response the app should send instead of scoring."""

    status: int
    error_code: str
    message: str
    retry_after_s: int | None = None


@dataclass(frozen=True)
class Decision:
    """What to do with one invocation before its body is parsed.

    ``holds_slot``: the invocation took one of its endpoint's capacity slots, which the
    app gives back with :meth:`FaultInjector.release` once it has answered.
    ``over_capacity``: the rejection is the capacity's 429.
    """

    delay_s: float = 0.0
    drop_connection: bool = False
    rejection: Rejection | None = None
    holds_slot: bool = True
    over_capacity: bool = False


def _is_number(value: object, low: float, high: float) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and low <= value <= high


def _is_int(value: object, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def _validators() -> Mapping[str, Callable[[object], bool]]:
    inf = float("inf")

    def deadline(v: object) -> bool:
        return v is None or _is_number(v, -inf, inf)

    return {
        "latency_ms": lambda v: _is_number(v, 0, inf),
        "rate_429": lambda v: _is_number(v, 0, 1),
        "retry_after_s": lambda v: v is None or _is_int(v, 0, 86_400),
        "fail_next": lambda v: _is_int(v, 0, 1_000_000_000),
        "fail_status": lambda v: _is_int(v, 400, 599),
        "outage_until": deadline,
        "poison_field": lambda v: v is None or isinstance(v, str),
        "max_payload_bytes": lambda v: _is_int(v, 0, 2**62),
        "oversize_status": lambda v: _is_int(v, 400, 599),
        "reset_connection_rate": lambda v: _is_number(v, 0, 1),
        "seed": lambda v: _is_int(v, -(2**63), 2**63),
        "capacity": lambda v: v is None or _is_int(v, 0, 1_000_000),
        "not_found_until": deadline,
        "forbidden_until": deadline,
        "scale_from_zero_until": deadline,
        "reject_all": lambda v: isinstance(v, bool),
        "reject_all_until": deadline,
    }


def merge_faults(faults: Faults, patch: Mapping[str, object], now: float) -> Faults:
    """``faults`` with ``patch`` applied; ValueError naming any unknown key or bad value.

    Besides the field names, a duration sets its deadline to ``now`` plus that many
    seconds, because remote callers cannot read the emulator's clock: ``outage_for_s``,
    ``not_found_for_s``, ``forbidden_for_s``, ``scale_from_zero_s`` and
    ``reject_all_for_s`` set ``outage_until`` ... ``reject_all_until``; 0 ends the state.
    """
    changes = dict(patch)
    for duration_key, deadline_key in _DURATIONS.items():
        if duration_key not in changes:
            continue
        duration = changes.pop(duration_key)
        if not _is_number(duration, 0, float("inf")):
            raise ValueError(f"{duration_key} must be a non-negative number")
        changes[deadline_key] = now + cast(float, duration)
    validators = _validators()
    unknown = sorted(set(changes) - set(validators))
    if unknown:
        raise ValueError(f"unknown fault(s): {', '.join(unknown)}")
    for name, value in changes.items():
        if not validators[name](value):
            raise ValueError(f"invalid value for fault {name}: {value!r}")
    return dataclasses.replace(faults, **changes)  # type: ignore[arg-type]


def _active(deadline: float | None, now: float) -> bool:
    return deadline is not None and now < deadline


class FaultInjector:
    """Holds the current :class:`Faults`, its RNG and the endpoints' capacity slots, and
    decides each request's fate.

    One injector serves the workspace and the data-plane servers, each on its own thread,
    so the slots are counted under a lock: an endpoint never answers more than
    ``capacity`` invocations at once, whichever plane they arrive on.
    """

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._in_use: Counter[str] = Counter()

    def update(self, patch: Mapping[str, object], now: float) -> Faults:
        """Merge ``patch`` (see :func:`merge_faults`); a new ``seed`` restarts the RNG.

        A lowered ``capacity`` applies to the next invocation; those already answering
        keep their slots.
        """
        self.faults = merge_faults(self.faults, patch, now)
        if "seed" in patch:
            self._rng = random.Random(self.faults.seed)
        return self.faults

    def reset(self) -> None:
        """Switch every fault off and restart the RNG (slots in use stay in use)."""
        self.faults = Faults()
        self._rng = random.Random(self.faults.seed)

    def in_use(self, endpoint: str) -> int:
        """How many invocations of ``endpoint`` hold a slot now."""
        return self._in_use[endpoint]

    def release(self, endpoint: str) -> None:
        """Give back the slot an admitted invocation of ``endpoint`` held."""
        with self._lock:
            if self._in_use[endpoint] > 0:
                self._in_use[endpoint] -= 1

    def _take_slot(self, endpoint: str) -> bool:
        capacity = self.faults.capacity
        with self._lock:
            if capacity is not None and self._in_use[endpoint] >= capacity:
                return False
            self._in_use[endpoint] += 1
            return True

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def _reject(self, status: int, message: str) -> Rejection:
        retry_after = self.faults.retry_after_s if status in _RETRY_AFTER_STATUSES else None
        code = _ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
        return Rejection(status, code, message, retry_after)

    def route_rejection(self, now: float, endpoint: str) -> Rejection | None:
        """404 while a not-found outage lasts, else 403 while a forbidden one does."""
        faults = self.faults
        if _active(faults.not_found_until, now):
            return self._reject(404, f"Endpoint with name '{endpoint}' does not exist.")
        if _active(faults.forbidden_until, now):
            message = f"User does not have permission to query serving endpoint '{endpoint}'."
            return self._reject(403, message)
        return None

    def scaling_from_zero(self, now: float) -> bool:
        """Whether endpoints are scaling up from zero at ``now`` (NOT_READY meanwhile)."""
        return _active(self.faults.scale_from_zero_until, now)

    def decide(self, now: float, endpoint: str = "") -> Decision:
        """The pre-parse decision for one invocation of ``endpoint`` arriving at ``now``."""
        faults = self.faults
        if self.scaling_from_zero(now):
            message = f"Endpoint '{endpoint}' is scaling up from zero; retry shortly."
            return Decision(rejection=self._reject(503, message), holds_slot=False)
        if not self._take_slot(endpoint):
            message = (
                f"Exceeded the provisioned concurrency of serving endpoint '{endpoint}' "
                f"({faults.capacity} requests at once)."
            )
            rejection = self._reject(429, message)
            return Decision(rejection=rejection, holds_slot=False, over_capacity=True)
        delay_s = faults.latency_ms / 1000
        if _active(faults.outage_until, now):
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

    def check_schema(self, now: float) -> Rejection | None:
        """A 400 for every request while the model's new signature rejects all input."""
        faults = self.faults
        if not faults.reject_all and not _active(faults.reject_all_until, now):
            return None
        # MLflow's own wording, so a client's error handling sees what production sends.
        message = f"Model is missing inputs {[NEW_SIGNATURE_INPUT]!r}."
        return Rejection(400, "BAD_REQUEST", message)

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
