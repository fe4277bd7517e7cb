"""Secret references: literal values, ``env:NAME`` and ``file:PATH``, never printed.

A :class:`Secret` is resolved when it is used, not when the config is parsed, so a rotated
file (a projected Kubernetes token, a systemd credential) is picked up on the next read.
Its ``repr`` and ``str`` are redacted so a secret cannot leak through a log line or a
traceback by accident. Given a :class:`~bridge.redaction.Redactor`, every value ``reveal()``
returns is registered with it, so the value is hidden wherever it turns up later (an
identity provider echoing it in an error, say). A reference whose target is itself a secret
(``env:<the secret>`` instead of ``env:NAME``, a common typo) is never printed: ``source``
and error messages show ``env:**********``, and the target is registered as a secret.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from bridge.errors import SecretError
from bridge.redaction import REDACTED as REDACTED  # re-exported: callers import it from here
from bridge.redaction import Redactor, suspicious_reference

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Called with a warning message when a secret file is readable by group or others.
PermissionWarning = Callable[[str], None]


class Secret:
    """A secret value or a reference to one; ``reveal()`` is the only way to read it."""

    __slots__ = ("_base_dir", "_env", "_identifier", "_redactor", "_reference", "_suspicious")

    def __init__(
        self,
        reference: str,
        *,
        base_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        redactor: Redactor | None = None,
        identifier: bool = False,
    ) -> None:
        """``identifier``: the value is a client id, registered as one (not hidden itself)."""
        self._reference = reference
        self._base_dir = base_dir
        self._env = env
        self._redactor = redactor
        self._identifier = identifier
        kind, _, target = reference.partition(":")
        self._suspicious = kind in ("env", "file") and suspicious_reference(kind, target)
        if self._suspicious and redactor is not None:
            redactor.register(target)

    @property
    def source(self) -> str:
        """Where the secret comes from, safe to print: ``env:NAME``, ``file:PATH`` or literal."""
        if self._reference.startswith(("env:", "file:")):
            return self._masked(self._reference)
        return "literal"

    def _masked(self, text: str) -> str:
        """``text`` (the reference, or a path or name made from it) with a target that is
        really a secret replaced by asterisks."""
        if not self._suspicious:
            return text
        return text.replace(self._reference.partition(":")[2], REDACTED)

    @property
    def path(self) -> Path | None:
        """The file behind a ``file:`` secret, with ``${VAR}`` expanded; None otherwise."""
        if not self._reference.startswith("file:"):
            return None
        env = os.environ if self._env is None else self._env
        raw = _expand(self._reference[len("file:") :], env)
        path = Path(raw)
        if not path.is_absolute() and self._base_dir is not None:
            path = self._base_dir / path
        return path

    def reveal(self, warn: PermissionWarning | None = None) -> str:
        """Resolve and return the secret; raises :class:`SecretError` naming the reference."""
        value = self._resolve(warn)
        if self._redactor is not None:
            if self._identifier:
                self._redactor.register_client_id(value)
            else:
                self._redactor.register(value)
        return value

    def _resolve(self, warn: PermissionWarning | None) -> str:
        env = os.environ if self._env is None else self._env
        if self._reference.startswith("env:"):
            name = self._reference[len("env:") :]
            if self._suspicious:
                raise SecretError(
                    f"{self.source} is not an environment variable name "
                    "(env: takes the name of a variable holding the secret, not the secret)"
                )
            value = env.get(name)
            if value is None or value == "":
                raise SecretError(f"environment variable {name} is not set")
            return value
        path = self.path
        if path is None:
            return self._reference
        shown = self._masked(str(path))
        try:
            mode = path.stat().st_mode
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"cannot read secret file {shown}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise SecretError(f"secret file {shown} is not UTF-8 text") from exc
        if warn is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
            warn(f"secret file {shown} is accessible by group or others (mode {mode & 0o777:o})")
        if not value:
            raise SecretError(f"secret file {shown} is empty")
        return value

    def __repr__(self) -> str:
        return f"Secret({self.source if self.source != 'literal' else REDACTED})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._reference == self._reference

    def __hash__(self) -> int:
        return hash(self._reference)


def _expand(raw: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` (notably ``${CREDENTIALS_DIRECTORY}`` from systemd) in a path."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise SecretError(f"environment variable {name} in secret path {raw} is not set")
        return env[name]

    return _VAR.sub(lookup, raw)
