"""Load and validate a config directory into frozen settings.

A config directory holds ``bridge.toml`` (daemon-wide: :mod:`bridge.config_bridge`) and
``routes/*.toml`` (one route per file, named by the file's stem: :mod:`bridge.config_route`).
Every section is a pydantic model with ``extra="forbid"`` and strict types
(:mod:`bridge.config_section`), so a typo is an error rather than a silently ignored key. All
problems in all files are collected and raised together as one
:class:`~bridge.errors.ConfigError`, each naming its file, dotted key and the offending value;
an unknown key comes with the known key it most resembles. Rules within one section are
validators of its model; rules between sections and files are in :mod:`bridge.config_rules`.
``check`` and ``run`` both load through :func:`inspect_config`, so ``check`` refuses whatever
``run`` would. Defaults live in the section models and nowhere else; ``config/`` holds the
same defaults as a commented example.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from bridge.config_bridge import BridgeSettings, WorkspaceSettings
from bridge.config_route import RouteSettings
from bridge.errors import ConfigError, ConfigProblem
from bridge.redaction import Redactor

if TYPE_CHECKING:
    from bridge.config_load import SecretsRead


class Config(BaseModel):
    """A whole config directory."""

    model_config = ConfigDict(frozen=True)

    directory: Path
    bridge: BridgeSettings
    routes: tuple[RouteSettings, ...]
    # Not errors, but worth a line at start-up (e.g. a secret file readable by others).
    warnings: tuple[str, ...] = ()

    def workspace_for(self, route: RouteSettings) -> WorkspaceSettings:
        """The workspace a named-endpoint route calls."""
        if route.endpoint.workspace is None:
            return self.bridge.databricks
        return self.bridge.workspaces[route.endpoint.workspace]


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class ConfigReport:
    """Everything found in a config directory: the config when valid, else its problems."""

    config: Config | None
    problems: list[ConfigProblem]
    warnings: list[str]


def load_config(
    directory: Path,
    env: Mapping[str, str] | None = None,
    *,
    redactor: Redactor | None = None,
    secrets: SecretsRead = "all",
) -> Config:
    """Read, validate and cross-check a config directory; raise ConfigError with every problem.

    Secrets are resolved once here so an unreadable secret file fails ``check`` and start-up,
    but they are read again whenever used; ``redactor`` learns every value revealed.
    Commands that never call Databricks read fewer (``secrets``: "pulsar" or "none").
    """
    report = inspect_config(directory, env, redactor=redactor, secrets=secrets)
    if report.config is None:
        raise ConfigError(report.problems)
    return report.config


def inspect_config(
    directory: Path,
    env: Mapping[str, str] | None = None,
    *,
    redactor: Redactor | None = None,
    secrets: SecretsRead = "all",
) -> ConfigReport:
    """Like :func:`load_config`, but returns the problems with the warnings (for ``check``)."""
    # Imported here: the loader builds the models above, so it imports this module.
    from bridge.config_load import read_directory

    env = dict(os.environ if env is None else env)
    return read_directory(directory, env, redactor, secrets=secrets)
