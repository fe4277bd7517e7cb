"""databricks-sdk's WorkspaceClient against the emulator, with nothing from the machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from databricks.sdk import WorkspaceClient


def workspace_client(
    host: str, client_id: str, client_secret: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> WorkspaceClient:
    """An oauth-m2m client of ``host``; the environment and ~/.databrickscfg are ignored,
    so only what the test passes is used."""
    for name in ["DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "missing.cfg"))
    return WorkspaceClient(
        host=host, client_id=client_id, client_secret=client_secret, auth_type="oauth-m2m"
    )
