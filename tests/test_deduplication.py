"""The effectively-once start check (bridge.deduplication) against admin API answers."""

from __future__ import annotations

import httpx
import pytest
import respx

from bridge.deduplication import DeduplicationOff, verify_deduplication

ADMIN = "http://admin.example:8080"
TOPIC = "persistent://acme/scores/results"
APPLIED = f"{ADMIN}/admin/v2/persistent/acme/scores/results/deduplicationEnabled"
NAMESPACE = f"{ADMIN}/admin/v2/namespaces/acme/scores/deduplication"


@respx.mock
async def test_deduplication_applied_to_the_topic_passes() -> None:
    respx.get(APPLIED).mock(return_value=httpx.Response(200, json=True))
    async with httpx.AsyncClient() as http:
        await verify_deduplication(http, ADMIN, TOPIC)


@respx.mock
async def test_without_topic_policies_the_namespace_setting_decides() -> None:
    respx.get(APPLIED).mock(return_value=httpx.Response(405))
    respx.get(NAMESPACE).mock(return_value=httpx.Response(200, json=True))
    async with httpx.AsyncClient() as http:
        await verify_deduplication(http, ADMIN, TOPIC)


@respx.mock
async def test_off_says_how_to_enable_it_and_never_shows_half_a_token() -> None:
    token = "dapi" + "0123456789abcdef" * 4
    body = "x" * 180 + f" Authorization: Bearer {token}"  # the cut falls inside the token
    respx.get(APPLIED).mock(return_value=httpx.Response(200, text=body))
    async with httpx.AsyncClient() as http:
        with pytest.raises(DeduplicationOff) as raised:
            await verify_deduplication(http, ADMIN, TOPIC)
    message = str(raised.value)
    assert "pulsar-admin namespaces set-deduplication acme/scores --enable" in message
    assert "dapi0123" not in message


@respx.mock
async def test_an_unreachable_admin_api_refuses_the_route() -> None:
    respx.get(APPLIED).mock(side_effect=httpx.ConnectError("refused"))
    async with httpx.AsyncClient() as http:
        with pytest.raises(DeduplicationOff, match="cannot read the deduplication policy"):
            await verify_deduplication(http, ADMIN, TOPIC)
