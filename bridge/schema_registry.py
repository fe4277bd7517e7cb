"""Where topics' schemas are read and registered: the broker's admin API, or its protocol.

With ``[pulsar] admin_url`` (and no auth, or token auth) the bridge uses the admin REST
API: ``GET /admin/v2/schemas/{tenant}/{namespace}/{topic}/schema[/{version}]`` to read,
``POST`` to the same path to register, whose refusal of an incompatible schema carries
the broker's reason. Without it, schemas are read over the binary protocol (any auth the
client has) and a result schema is registered by the producer that declares it; the
broker's refusal then names only the error (``IncompatibleSchema``). pulsar-lite has
neither: it keeps no schemas (a lookup times out).
"""

from __future__ import annotations

import html
import json
import re
from typing import Protocol
from urllib.parse import quote

import httpx

from bridge import topics
from bridge.config_bridge import PulsarSettings, PulsarTokenAuth
from bridge.errors import BrokerError, SchemaError
from bridge.pulsar_io import PulsarConnection
from bridge.schemas import TopicSchema

ADMIN_TIMEOUT_S = 10.0


class SchemaRegistry(Protocol):
    """Reads (and, where it can, registers) topics' schemas."""

    async def fetch(self, topic: str, version: int | None = None) -> TopicSchema | None:
        """The schema at ``version`` (None: the latest); None when there is none.

        BrokerError when the registry cannot be asked (the schema may well exist).
        """
        ...

    async def register(self, topic: str, schema: TopicSchema) -> int | None:
        """Register ``schema`` on ``topic``; its version when the registry tells it.

        BrokerError with the broker's reason when it refuses.
        """
        ...


def registry_for(pulsar: PulsarConnection) -> SchemaRegistry:
    """The admin API when it is configured and its auth can be sent, else the protocol."""
    settings = pulsar.settings
    if settings.admin_url is not None and (
        settings.auth is None or isinstance(settings.auth, PulsarTokenAuth)
    ):
        return AdminRegistry(settings)
    return ProtocolRegistry(pulsar)


def schema_path(topic: str) -> str:
    """``tenant/namespace/topic`` of a (partition's) topic, as the schema API names it."""
    name = topics.parse(topic).base
    return f"{name.namespace}/{quote(name.local, safe='')}"


class AdminRegistry:
    """The admin REST API. A client per call: lookups are rare (start, new versions)."""

    def __init__(self, settings: PulsarSettings) -> None:
        assert settings.admin_url is not None
        self._base = f"{settings.admin_url.rstrip('/')}/admin/v2/schemas"
        self._settings = settings

    def _client(self) -> httpx.AsyncClient:
        settings = self._settings
        headers = {"Accept": "application/json"}
        if isinstance(settings.auth, PulsarTokenAuth):
            headers["Authorization"] = f"Bearer {settings.auth.token.reveal()}"
        verify: bool | str = True
        if settings.tls_allow_insecure:
            verify = False
        elif settings.tls_trust_certs_file is not None:
            verify = settings.tls_trust_certs_file
        return httpx.AsyncClient(headers=headers, verify=verify, timeout=ADMIN_TIMEOUT_S)

    async def fetch(self, topic: str, version: int | None = None) -> TopicSchema | None:
        url = f"{self._base}/{schema_path(topic)}/schema"
        if version is not None:
            url += f"/{version}"
        try:
            async with self._client() as http:
                response = await http.get(url)
        except httpx.HTTPError as exc:
            raise BrokerError(f"schema of {topic}: admin API unreachable: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise BrokerError(f"schema of {topic}: admin API answered {_reason(response)}")
        try:
            body = response.json()
            return TopicSchema(str(body["type"]), str(body["data"]), int(body["version"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise BrokerError(f"schema of {topic}: unexpected admin answer: {exc}") from exc

    async def register(self, topic: str, schema: TopicSchema) -> int | None:
        url = f"{self._base}/{schema_path(topic)}/schema"
        body = {"type": schema.type, "schema": schema.definition, "properties": {}}
        try:
            async with self._client() as http:
                response = await http.post(url, json=body)
        except httpx.HTTPError as exc:
            raise BrokerError(f"registering the schema of {topic}: {exc}") from exc
        if response.status_code == 409:
            raise SchemaError(
                f"the broker refused the result schema on {topic}: {_reason(response)}"
            )
        if response.status_code != 200:
            raise BrokerError(f"registering the schema of {topic}: {_reason(response)}")
        try:
            return int(response.json()["version"]["version"])
        except (ValueError, KeyError, TypeError):
            return None


class ProtocolRegistry:
    """Lookups over the binary protocol; the result producer registers its own schema."""

    def __init__(self, pulsar: PulsarConnection) -> None:
        self._pulsar = pulsar

    async def fetch(self, topic: str, version: int | None = None) -> TopicSchema | None:
        found = await self._pulsar.schema_of(topic, version)
        return None if found is None else TopicSchema(found[0], found[1], version)

    async def register(self, topic: str, schema: TopicSchema) -> int | None:
        return None  # declared by the result producer itself


def _reason(response: httpx.Response) -> str:
    """The broker's reason: its JSON ``reason`` or ``message`` (HTML-escaped), or the text."""
    text = response.text
    try:
        body = json.loads(text)
        text = str(body.get("reason") or body.get("message") or text)
    except (ValueError, AttributeError):
        pass
    flat = re.sub(r"\s+", " ", html.unescape(text)).strip()
    return f"HTTP {response.status_code}: {flat}"
