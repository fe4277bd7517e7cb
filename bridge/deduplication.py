"""Whether a result topic's broker drops duplicates, which effectively-once relies on.

Asked once per effectively-once route at start, through Apache Pulsar's admin API: the
topic's applied policy, or the namespace's where topic-level policies are off.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from bridge.errors import BridgeError
from bridge.redaction import shorten
from bridge.topics import parse as parse_topic


class DeduplicationOff(BridgeError):
    """The result topic's broker would not drop duplicates: effectively-once cannot work."""


async def verify_deduplication(http: httpx.AsyncClient, admin_url: str, topic: str) -> None:
    """Raise DeduplicationOff unless deduplication applies to ``topic`` (admin API)."""
    name = parse_topic(topic)
    base = admin_url.rstrip("/")
    path = f"{name.namespace}/{quote(name.local, safe='')}"
    url = f"{base}/admin/v2/{name.domain}/{path}/deduplicationEnabled"
    try:
        response = await http.get(url, params={"applied": "true"}, timeout=10.0)
        if response.status_code in (404, 405, 412):
            # Topic-level policies off: the namespace's setting (null: the broker default).
            ns_url = f"{base}/admin/v2/namespaces/{name.namespace}/deduplication"
            response = await http.get(ns_url, timeout=10.0)
    except httpx.HTTPError as exc:
        raise DeduplicationOff(
            f"cannot read the deduplication policy of {topic} at {admin_url}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    enabled: Any = None
    if response.status_code == 200 and response.content:
        try:
            enabled = response.json()
        except ValueError:  # not JSON (a proxy's page): said below, with what it was
            enabled = None
    if enabled is not True:
        raise DeduplicationOff(
            f"deduplication is not enabled for {topic} (admin API answered "
            f"{response.status_code}: {shorten(response.text, 200)!r}); enable it with "
            f"`pulsar-admin namespaces set-deduplication {name.namespace} "
            '--enable` or on the topic, or use result.delivery = "at-least-once"'
        )
