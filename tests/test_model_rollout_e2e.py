"""A new model version rolled out mid-stream: results say which version scored them."""

from __future__ import annotations

import json

import pulsar
import pytest

from bridge.emulator import EmulatorServer
from tests.conftest import BridgeFactory
from tests.support.harness import TopicReader, Topics, event, publish, route_config

pytestmark = pytest.mark.integration


def test_a_model_version_change_is_logged_once_and_stamped_on_results(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge({"fraud": route_config(topics)})
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(100)])
    results.read_until(lambda ms: len(ms) >= 100)

    emulator.state.served_models = {"fraud-model": "fraud-model-2"}
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(100, 200)])
    got = results.read_until(lambda ms: len(ms) >= 200)
    bridge.stop()

    versions = [m.properties["served_model"] for m in got]
    assert versions[:100] == ["fraud-model-1"] * 100
    assert versions[100:] == ["fraud-model-2"] * 100
    (changed,) = bridge.events("served_model_changed")
    assert changed["previous"] == "fraud-model-1"
    assert changed["current"] == "fraud-model-2"
