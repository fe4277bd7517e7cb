"""Rules that span sections or files of a config directory, which no single model can see.

    check_subscriptions  two routes must not share a subscription on one topic
    check_loops          no result or dead-letter topic may flow back into its own route's
                         source, directly or through other routes (A -> B -> A)
    check_workspaces     every named endpoint has a workspace with a host
    check_secrets        every secret named in bridge.toml resolves
    check_credential_files  ... and every other credential file or variable

They read the raw tables of each file (:class:`RouteView`, the bridge.toml dict) rather than
validated settings, so a mistake in one section does not hide a loop or an unset secret
elsewhere: ``check`` lists everything in one pass. Values that are themselves invalid are
skipped here; the model validation reports them. Topics are compared by their normalised
names (:mod:`bridge.topics`), never as written.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import topics
from bridge.errors import ConfigProblem, SecretError
from bridge.secrets import Secret

if TYPE_CHECKING:
    from bridge.config import WorkspaceSettings


@dataclass(frozen=True)
class Output:
    """A topic a route publishes to: its results or its dead letters."""

    key: str  # "result.topic" or "failure.dead_letter_topic"
    written: str
    topic: topics.TopicName


@dataclass(frozen=True)
class RouteView:
    """What the rules between files need of one route, read from its raw table."""

    name: str
    file: str
    subscription: str | None
    sources: tuple[tuple[str, topics.TopicName], ...]
    outputs: tuple[Output, ...]
    endpoint_name: str | None
    workspace: str | None

    @classmethod
    def read(cls, name: str, file: str, raw: Mapping[str, Any]) -> RouteView:
        source, endpoint = _table(raw, "source"), _table(raw, "endpoint")
        result, failure = _table(raw, "result"), _table(raw, "failure")
        subscription = _string(source.get("subscription"))
        written = source.get("topics")
        sources = [(t, _parsed(t)) for t in written] if isinstance(written, list) else []
        outputs = [("result.topic", _string(result.get("topic")))]
        dead_letter = _string(failure.get("dead_letter_topic"))
        if dead_letter is None and "dead_letter_topic" not in failure:
            # The default, derived from the first source topic, can loop as well.
            first = written[0] if isinstance(written, list) and written else None
            if isinstance(first, str) and subscription is not None:
                dead_letter = topics.default_dead_letter_topic(first, subscription)
        outputs.append(("failure.dead_letter_topic", dead_letter))
        return cls(
            name=name,
            file=file,
            subscription=subscription,
            sources=tuple((t, p) for t, p in sources if isinstance(t, str) and p is not None),
            outputs=tuple(
                Output(key, text, parsed)
                for key, text in outputs
                if text is not None and (parsed := _parsed(text)) is not None
            ),
            endpoint_name=_string(endpoint.get("name")) if "url" not in endpoint else None,
            workspace=_string(endpoint.get("workspace")),
        )


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def _string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _parsed(name: object) -> topics.TopicName | None:
    if not isinstance(name, str):
        return None
    try:
        return topics.parse(name)
    except topics.TopicNameError:
        return None  # reported by the model validation


def _same(written: str, topic: topics.TopicName, other: str, other_topic: topics.TopicName) -> str:
    """Why two spellings name one topic, when they differ; "" when they are equal."""
    if written == other:
        return ""
    if topic == other_topic:
        return f" (both are {topic})"
    return f" (both are {topic.base}, or a partition of it)"


# --------------------------------------------------------------------------- topics


def check_subscriptions(routes: Iterable[RouteView]) -> list[ConfigProblem]:
    """Two routes on one subscription of one topic would split its events between them."""
    problems: list[ConfigProblem] = []
    claimed: list[tuple[str, str, topics.TopicName, str]] = []
    for route in routes:
        if route.subscription is None:
            continue
        for written, topic in route.sources:
            owner = next(
                (c for c in claimed if c[0] == route.subscription and topics.overlaps(c[2], topic)),
                None,
            )
            if owner is None:
                claimed.append((route.subscription, written, topic, route.file))
                continue
            problems.append(
                ConfigProblem(
                    route.file,
                    "source.subscription",
                    f"subscription {route.subscription!r} on topic {written!r} is already used "
                    f"by {owner[3]}{_same(written, topic, owner[1], owner[2])}",
                )
            )
    return problems


def check_loops(routes: Iterable[RouteView]) -> list[ConfigProblem]:
    """An output that reaches its own route's source again would feed events round forever.

    5 events became 2,345 results in 12 s when a result topic was its source under another
    spelling. Chains (A -> B, B -> C) are pipelines and fine; only a way back is refused.
    """
    views = list(routes)
    problems: list[ConfigProblem] = []
    for route in views:
        for output in route.outputs:
            found = _way_back(route, output, views)
            if found is None:
                continue
            hops, (source_written, source) = found
            what = "result" if output.key == "result.topic" else "dead letter"
            target = f"this route's source {source_written!r}"
            if not hops:
                same = _same(output.written, output.topic, source_written, source)
                message = (
                    f"{output.written!r} is {target}{same}: every {what} would be consumed "
                    "again as a new event, without end"
                )
            else:
                path = "; ".join(
                    f"route {via.name!r} ({via.file}) consumes it and publishes "
                    f"{out.key} {out.written!r}"
                    for via, out in hops
                )
                message = (
                    f"{output.written!r} leads back to {target}: {path}; every {what} would "
                    "come back as a new event, without end"
                )
            problems.append(ConfigProblem(route.file, output.key, message))
    return problems


Hop = tuple[RouteView, Output]


def _way_back(
    route: RouteView, output: Output, views: list[RouteView]
) -> tuple[list[Hop], tuple[str, topics.TopicName]] | None:
    """The routes an output passes through to reach ``route``'s source (breadth first)."""
    frontier: list[tuple[topics.TopicName, list[Hop]]] = [(output.topic, [])]
    seen = {output.topic}
    while frontier:
        following: list[tuple[topics.TopicName, list[Hop]]] = []
        for topic, hops in frontier:
            home = next((s for s in route.sources if topics.overlaps(s[1], topic)), None)
            if home is not None:
                return hops, home
            for via in views:
                if via is route or not any(topics.overlaps(s, topic) for _, s in via.sources):
                    continue
                for out in via.outputs:
                    if out.topic not in seen:
                        seen.add(out.topic)
                        following.append((out.topic, [*hops, (via, out)]))
        frontier = following
    return None


def non_persistent_outputs(routes: Iterable[RouteView]) -> list[str]:
    """Warnings: a non-persistent topic drops what is published while nobody reads it."""
    return [
        f"{route.file}: {out.key}: {out.written!r} is non-persistent: the broker keeps "
        f"nothing published while no consumer is connected, yet the source event is acked"
        for route in routes
        for out in route.outputs
        if not out.topic.persistent
    ]


# --------------------------------------------------------------------------- bridge.toml


def check_workspaces(
    workspaces: Mapping[str | None, WorkspaceSettings | None],
    routes: Iterable[RouteView],
    bridge_file: Path,
) -> list[ConfigProblem]:
    """Every named-endpoint route has a workspace with a host.

    ``workspaces`` maps None to ``[databricks]`` and each ``[databricks.<name>]`` to its
    settings, or to None when that section is invalid (already reported): it exists, but
    what it holds is unknown.
    """
    problems: list[ConfigProblem] = []
    named = [name for name in workspaces if name is not None]
    for route in routes:
        if route.endpoint_name is None:
            continue
        if route.workspace is not None and route.workspace not in workspaces:
            hint = difflib.get_close_matches(route.workspace, named, n=1)
            problems.append(
                ConfigProblem(
                    route.file,
                    "endpoint.workspace",
                    f"no [databricks.{route.workspace}] in {bridge_file}"
                    + (f"; did you mean {hint[0]!r}?" if hint else ""),
                )
            )
            continue
        workspace = workspaces.get(route.workspace)
        if workspace is None:
            continue
        if workspace.host is None and workspace.resolved_auth_type != "databricks-sdk":
            section = "databricks" if route.workspace is None else f"databricks.{route.workspace}"
            problems.append(
                ConfigProblem(
                    str(bridge_file),
                    f"{section}.host",
                    f"required by route {route.name!r} (endpoint.name); or set DATABRICKS_HOST",
                )
            )
    return problems


def check_secrets(
    secrets: Mapping[str, Secret], bridge_file: Path, warnings: list[str]
) -> list[ConfigProblem]:
    """Resolve every secret (by its dotted key) as run would, at once, whatever else is wrong."""
    problems: list[ConfigProblem] = []
    for key, secret in secrets.items():

        def warn(text: str, key: str = key) -> None:
            warnings.append(f"{bridge_file}: {key}: {text}")

        try:
            secret.reveal(warn=warn)
        except SecretError as exc:
            problems.append(ConfigProblem(str(bridge_file), key, str(exc)))
    return problems


def check_credential_files(
    data: Mapping[str, Any], env: Mapping[str, str], bridge_file: Path, warnings: list[str]
) -> list[ConfigProblem]:
    """The files and variables the daemon reads credentials from, other than secrets.

    Paths are taken as written, relative to the daemon's working directory, as the
    identity code and the Pulsar client read them. An OIDC subject token that cannot be
    read is only a warning: it is re-read at every exchange, and a token agent may write
    it after the bridge starts.
    """
    problems: list[ConfigProblem] = []
    tables = {"databricks": _table(data, "databricks")}
    for name, table in _table(data, "workspaces").items():
        tables[f"databricks.{name}"] = table if isinstance(table, dict) else {}
    for section, table in tables.items():
        for field, kind in (("oidc_token_file", "file"), ("oidc_token_env", "env")):
            where = _string(table.get(field))
            if where is None:
                continue
            try:
                Secret(f"{kind}:{where}", env=env).reveal()
            except SecretError as exc:
                warnings.append(
                    f"{bridge_file}: {section}.{field}: {exc} (token exchanges fail until it is)"
                )
    trust = _string(_table(data, "pulsar").get("tls_trust_certs_file"))
    if trust is not None and not Path(trust).is_file():
        problems.append(
            ConfigProblem(str(bridge_file), "pulsar.tls_trust_certs_file", f"no file {trust}")
        )
    return problems
