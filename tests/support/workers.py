"""How the suite is spread over pytest-xdist workers: each broker tier is one work unit.

``make test`` runs pytest with ``-n 2 --dist loadscope``; ``tests/conftest.py`` hands xdist
:class:`TierScheduling`, which keeps xdist's loadscope scheduler (a unit goes whole to one
worker, the largest units first) but draws the units by broker tier instead of by module:

* every test on the Apache Pulsar tier is one unit, so the session's Apache Pulsar (a JVM,
  restarted in place by the chaos and effectively-once tests) starts once, in one worker;
* every test on the pulsar-lite tier is another unit, with the real-model tests that need
  no broker (they share that worker's ``mlflow models serve``);
* ``tests/test_apache_security.py`` is a unit of its own: its TLS + token broker is a module
  fixture, so it runs beside the Apache tier instead of after it;
* any other test goes with its module, as under plain loadscope.

xdist's own ``--dist loadgroup`` would say the same with marks, but it passes the group to the
controller by rewriting node ids, which pytest 9.2 no longer lets it do (the marks are then
silently ignored: pytest-dev/pytest-xdist#1386). The tier is read from the node id instead:
the ``broker`` fixture's parameter ids are the tier names, and ``tests/conftest.py`` checks at
collection that every test's id names the tier it runs on.
"""

from __future__ import annotations

from typing import Any

# pytest-xdist ships no type information.
from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

APACHE = "apache"
PULSAR_LITE = "pulsar-lite"
APACHE_SECURE = "apache-secure"


def tier_in_id(nodeid: str) -> str | None:
    """The broker tier a node id's parameter ids name, if any (``[2-apache]``, ``[pulsar-lite]``,
    ``[pulsar-lite-instances]``; ids are joined with ``-``)."""
    _path, _sep, name = nodeid.partition("::")
    _function, bracket, params = name.partition("[")
    if not bracket:
        return None
    ids = f"-{params.removesuffix(']')}-"
    if f"-{PULSAR_LITE}-" in ids:
        return PULSAR_LITE
    if f"-{APACHE}-" in ids:
        return APACHE
    return None


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its broker tier, else its module."""
    path = nodeid.partition("::")[0]
    if path.endswith("/test_apache_security.py"):
        return APACHE_SECURE
    tier = tier_in_id(nodeid)
    if tier is not None:
        return tier
    if path.endswith("/test_mlflow_e2e.py"):
        return PULSAR_LITE
    return path


class TierScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """xdist's loadscope scheduling with :func:`work_unit` as the scope."""

    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)


def make_scheduler(config: Any, log: Any) -> Any:
    """What ``pytest_xdist_make_scheduler`` returns (typed loosely: xdist has no types)."""
    return TierScheduling(config, log)
