"""What a test does when something it needs is missing: skip locally, fail in CI.

A green CI run must not have skipped a test silently; on a developer's machine a skip
with the reason is friendlier than a failure.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when the ``CI`` environment variable says so (as GitHub, GitLab and others set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(reason: str) -> NoReturn:
    """End the calling test: a failure in CI, a skip elsewhere."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)
