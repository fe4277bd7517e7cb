"""The bridge's one exception tree.

    BridgeError
    ├── ConfigError            the config directory is invalid (carries every problem found)
    ├── SecretError            a secret reference (env:/file:) cannot be resolved
    ├── AuthError              a token could not be obtained from the identity provider
    ├── EndpointError          a serving call failed; ``retriable`` says whether to try again
    │   └── ResponseShapeError the endpoint answered 200 with a body we cannot map
    ├── BrokerError            a Pulsar operation failed (subscribe, publish, ack)
    ├── SchemaError            a topic's schema cannot be used, or the broker refused one
    └── ShutdownRequested      raised inside a route when the daemon is draining

Foreign exceptions (httpx, pulsar, authlib) are translated where they are caught, with
``raise ... from exc``, so callers branch on this tree alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration: where it is and what is wrong."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class ConfigError(BridgeError):
    """The configuration is invalid; ``problems`` lists everything found, not just the first."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SecretError(BridgeError):
    """A secret reference could not be resolved (unset variable, unreadable file)."""


class AuthError(BridgeError):
    """The identity provider refused or failed to issue a token.

    ``retriable`` is False for a refusal (the credentials or grant are wrong: a config
    problem) and True when it was overloaded or unreachable; ``retry_after`` is the wait in
    seconds it asked for, when it did.
    """

    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after


class EndpointError(BridgeError):
    """A call to the serving endpoint failed.

    ``status`` is the HTTP status (None for connect errors and timeouts), ``retriable``
    whether the same request may succeed later, ``retry_after`` the server's requested
    wait in seconds when it sent one, and ``timeout`` whether the request ran out of time
    (an overloaded endpoint) rather than failing to connect or being refused.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        retriable: bool,
        retry_after: float | None = None,
        timeout: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retriable = retriable
        self.retry_after = retry_after
        self.timeout = timeout

    @property
    def reason(self) -> str:
        """A one-line reason fit for a dead-letter property or a log field."""
        prefix = f"HTTP {self.status}" if self.status is not None else "transport"
        return f"{prefix}: {self.message}"


class ResponseShapeError(EndpointError):
    """A 200 response whose predictions cannot be matched one-to-one with the batch (not
    JSON, the wrong shape, too large or too deeply nested): the batch is bisected."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=200, retriable=False)


class BrokerError(BridgeError):
    """A Pulsar operation failed."""


class SchemaError(BridgeError):
    """A route cannot start with its schemas: a source topic's registered schema is one the
    bridge cannot decode, or the broker refused the result schema (the message says why)."""


class ResultRejected(BrokerError):
    """The client refused one result for good (larger than the broker accepts, say):
    sending it again cannot help, so its event is dead-lettered instead."""


class BatchRefused(BrokerError):
    """The client or broker refused a deduplicated batch as a whole (larger than the broker
    accepts): its results are fine, and go again in smaller batches."""


class ShutdownRequested(BridgeError):
    """The daemon is draining; work that has not started should be handed back."""
