"""Rules that span sections or files of a config directory, which no single model can see.

    check_subscriptions  two routes must not share a subscription on one topic
    check_loops          no result or dead-letter topic may flow back into its own route's
                         source, directly or through other routes (A -> B -> A)
    check_workspaces     every named endpoint has a workspace with a host
    secret_references    the secrets named in bridge.toml, as written
    check_secrets        every secret named in bridge.toml resolves
    check_references     ... or, for a command that does not read it, is well formed
    check_credential_files  ... and every other credential file or variable

They read the raw tables of each file (:class:`RouteView`, the bridge.toml dict) rather than
validated settings, so a mistake in one section does not hide a loop or an unset secret
elsewhere: ``check`` lists everything in one pass. Values that are themselves invalid are
skipped here; the model validation reports them. Topics are compared by their normalised
names (:mod:`bridge.topics`), never as written.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import topics
from bridge.errors import ConfigProblem, SecretError
from bridge.redaction import REDACTED, suspicious_reference
from bridge.secrets import Secret

if TYPE_CHECKING:
    from bridge.config_bridge import WorkspaceSettings


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
    *,
    require_host: bool = True,
) -> list[ConfigProblem]:
    """Every named-endpoint route has a workspace with a host.

    ``workspaces`` maps None to ``[databricks]`` and each ``[databricks.<name>]`` to its
    settings, or to None when that section is invalid (already reported): it exists, but
    what it holds is unknown. ``require_host=False`` (commands that never call Databricks)
    only checks that the workspace exists: the host may come from ``DATABRICKS_HOST`` in
    the service's environment, not in the operator's shell.
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
        if workspace is None or not require_host:
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


def secret_references(data: Mapping[str, Any]) -> dict[str, str]:
    """Every secret bridge.toml names, by dotted key, as written (a value that is not a
    non-empty string is left to the settings validation)."""
    tables: dict[str, object] = {"databricks": data.get("databricks")}
    workspaces = data.get("workspaces")
    if isinstance(workspaces, dict):
        tables.update({f"databricks.{name}": t for name, t in workspaces.items()})
    auth = _table(_table(data, "pulsar"), "auth")
    if auth.get("type") == "token":
        tables["pulsar.auth"] = {"token": auth.get("token")}
    found: dict[str, str] = {}
    for section, table in tables.items():
        if not isinstance(table, dict):
            continue
        for field in ("client_id", "client_secret", "token"):
            value = table.get(field)
            if isinstance(value, str) and value:
                found[f"{section}.{field}"] = value
    return found


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


# ``${NAME}`` in a file: path, expanded when the secret is read (bridge.secrets).
_PLACEHOLDER = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def check_references(references: Mapping[str, str], bridge_file: Path) -> list[ConfigProblem]:
    """Secrets a command does not read (by dotted key, as written): each well formed.

    For ``status`` and the operator tools, which never call Databricks: its secrets may
    resolve only inside the service (``file:${CREDENTIALS_DIRECTORY}/...``, a variable in
    the unit's environment), so they are not read, but a reference that could never
    resolve anywhere is still refused. A target that looks like the secret itself is
    never shown.
    """
    problems: list[ConfigProblem] = []
    for key, reference in references.items():
        why = _reference_problem(reference)
        if why is not None:
            problems.append(ConfigProblem(str(bridge_file), key, why))
    return problems


def _reference_problem(reference: str) -> str | None:
    kind, _, target = reference.partition(":")
    if kind == "env" and suspicious_reference("env", target):
        return (
            f"env:{REDACTED} is not an environment variable name (env: takes the name of a "
            "variable holding the secret, not the secret)"
        )
    if kind != "file":
        return None  # a literal, or env: with a variable name
    if not target:
        return "file: needs the path of the file holding the secret"
    if suspicious_reference("file", target):
        return f"file:{REDACTED} looks like the secret itself, not the path of its file"
    if "${" in _PLACEHOLDER.sub("", target):
        return f"{reference!r}: '${{' must start a variable, as in ${{CREDENTIALS_DIRECTORY}}"
    return None


def check_credential_files(
    data: Mapping[str, Any],
    env: Mapping[str, str],
    bridge_file: Path,
    warnings: list[str],
    *,
    databricks: bool = True,
) -> list[ConfigProblem]:
    """The files and variables the daemon reads credentials from, other than secrets.

    Paths are taken as written, relative to the daemon's working directory, as the
    identity code and the Pulsar client read them. An OIDC subject token that cannot be
    read is only a warning: it is re-read at every exchange, and a token agent may write
    it after the bridge starts. ``databricks=False`` leaves the workspaces' files unread.
    """
    problems: list[ConfigProblem] = []
    tables: dict[str, Mapping[str, Any]] = {}
    if databricks:
        tables["databricks"] = _table(data, "databricks")
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
