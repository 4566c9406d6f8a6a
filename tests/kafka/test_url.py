"""kafka:// URLs and the error a missing confluent-kafka gives (no broker needed)."""

from __future__ import annotations

import sys

import pytest

import streamflow
from streamflow.errors import InvalidConfig
from streamflow.log.kafka import open_kafka_transport, parse_kafka_url


def test_parse_kafka_url_gives_bootstrap_servers() -> None:
    assert parse_kafka_url("kafka://127.0.0.1:9092") == "127.0.0.1:9092"
    assert parse_kafka_url("kafka://h1:9092, h2:9093") == "h1:9092,h2:9093"


@pytest.mark.parametrize(
    "url",
    [
        "tcp://h:9092",
        "kafka://h",
        "kafka://h:port",
        "kafka://:9092",
        "kafka://h:9092/x",
        "kafka://",
    ],
)
def test_parse_kafka_url_refuses_other_targets(url: str) -> None:
    with pytest.raises(InvalidConfig, match="kafka://host:port"):
        parse_kafka_url(url)


async def test_missing_confluent_kafka_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # makes the import fail
    with pytest.raises(InvalidConfig, match=r"pip install 'streamflow-trio\[kafka\]'"):
        await open_kafka_transport("kafka://127.0.0.1:9")


async def test_connect_opens_a_kafka_target(kafka_bootstrap: str) -> None:
    async with streamflow.connect(f"kafka://{kafka_bootstrap}") as client:
        await client.create_topic("via-connect", partitions=2)
        async with client.producer() as producer:
            meta = await producer.send("via-connect", {"n": 1}, key="k")
        assert meta.topic == "via-connect"
        assert "via-connect" in await client.topics()
