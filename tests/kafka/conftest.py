"""Fixtures for the Kafka transport tests: a Kafka-protocol broker and transports on it.

When ``STREAMFLOW_KAFKA_BOOTSTRAP`` is set (``host:port[,host:port]``) the tests
use that cluster; otherwise a session-wide noida-db broker is started on a free
loopback port in a temporary directory and killed at the end (``noida``).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from .noida import kafka_bootstrap_servers, register_marker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from streamflow.log.kafka_transport import KafkaTransport

#: Short waits so that tests against a test broker stay quick.
TEST_CONSUMER_CONFIG = {"fetch.wait.max.ms": 50}
SESSION_TIMEOUT_MS = 6000


def pytest_configure(config: pytest.Config) -> None:
    register_marker(config)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return ``bootstrap.servers`` of the test cluster (started here when needed)."""
    yield from kafka_bootstrap_servers(tmp_path_factory)


@pytest.fixture
def kafka_url(kafka_bootstrap: str) -> str:
    """Return the test cluster as a ``kafka://`` URL."""
    return f"kafka://{kafka_bootstrap}"


@pytest.fixture
async def kafka(kafka_url: str) -> AsyncIterator[KafkaTransport]:
    """Open a transport on the test cluster (short fetch waits), closed after the test."""
    from streamflow.log.kafka import open_kafka_transport

    transport = await open_kafka_transport(kafka_url, consumer_config=TEST_CONSUMER_CONFIG)
    try:
        yield transport
    finally:
        await transport.aclose()


@pytest.fixture
def new_topic(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Return a function giving a fresh, unique topic name for this test."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]

    def make() -> str:
        return f"{base}.{uuid.uuid4().hex[:8]}"

    return make
