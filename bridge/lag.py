"""Subscription lag from the broker: the admin REST API, or Prometheus for pulsar-lite.

Lag is the broker's view (backlog, unacked, consumers), read for ``pulsar-bridge status``
whether the daemon runs or not; the daemon itself never needs it. The admin API gets the
``[pulsar] auth`` token when there is one, read when used (status loads the config without
reading secrets); pulsar-lite's metrics need none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bridge.config_bridge import PulsarSettings, PulsarTokenAuth
from bridge.errors import SecretError


@dataclass(frozen=True)
class Lag:
    backlog: int | None = None
    unacked: int | None = None
    consumers: int | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _topic_path(topic: str) -> tuple[str, str, str]:
    """(domain, "tenant/namespace", local name) of a full or short topic name."""
    domain, rest = topic.split("://", 1) if "://" in topic else ("persistent", topic)
    parts = rest.split("/")
    if len(parts) == 1:
        parts = ["public", "default", *parts]
    return domain, "/".join(parts[:2]), "/".join(parts[2:])


async def read_lag(
    http: httpx.AsyncClient, pulsar: PulsarSettings, topics: list[str], subscription: str
) -> Lag:
    """Lag of one subscription summed over its topics; ``error`` says why it is unknown."""
    if pulsar.admin_url:
        headers: dict[str, str] = {}
        if isinstance(pulsar.auth, PulsarTokenAuth):
            try:
                headers["Authorization"] = f"Bearer {pulsar.auth.token.reveal()}"
            except SecretError as exc:
                return Lag(error=f"admin API: [pulsar] auth token: {exc}")
        return await _admin_lag(http, pulsar.admin_url, topics, subscription, headers)
    if pulsar.metrics_url:
        return await _prometheus_lag(http, pulsar.metrics_url, topics, subscription)
    return Lag(error="set [pulsar] admin_url (or metrics_url for pulsar-lite)")


async def _admin_lag(
    http: httpx.AsyncClient, admin: str, topics: list[str], sub: str, headers: dict[str, str]
) -> Lag:
    backlog = unacked = consumers = 0
    for topic in topics:
        domain, namespace, local = _topic_path(topic)
        url = f"{admin.rstrip('/')}/admin/v2/{domain}/{namespace}/{quote(local, safe='')}/stats"
        try:
            response = await http.get(url, headers=headers)
            response.raise_for_status()
            stats = response.json().get("subscriptions", {}).get(sub)
        except (httpx.HTTPError, ValueError) as exc:
            return Lag(error=f"admin API: {exc}")
        if stats is None:
            return Lag(error=f"no subscription {sub} on {topic}")
        backlog += int(stats.get("msgBacklog", 0))
        unacked += int(stats.get("unackedMessages", 0))
        consumers += len(stats.get("consumers", []))
    return Lag(backlog, unacked, consumers)


async def _prometheus_lag(http: httpx.AsyncClient, url: str, topics: list[str], sub: str) -> Lag:
    try:
        response = await http.get(url)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return Lag(error=f"broker metrics: {exc}")
    wanted = {(ns, local) for _, ns, local in map(_topic_path, topics)}
    values = {
        "pulsar_subscription_back_log": 0,
        "pulsar_subscription_unacked_messages": 0,
        "pulsar_subscription_consumers_count": 0,
    }
    seen = False
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name not in values or labels.get("subscription") != sub:
                continue
            if (labels.get("namespace"), labels.get("topic")) in wanted:
                values[sample.name] += int(sample.value)
                seen = True
    if not seen:
        return Lag(error=f"broker metrics have no subscription {sub} (yet)")
    return Lag(
        values["pulsar_subscription_back_log"],
        values["pulsar_subscription_unacked_messages"],
        values["pulsar_subscription_consumers_count"],
    )
