"""Fixtures for the Kafka transport tests: a Kafka-protocol broker and transports on it.

When ``STREAMFLOW_KAFKA_BOOTSTRAP`` is set (``host:port[,host:port]``) the tests
use that cluster; otherwise a session-wide noida-db broker is started on a free
loopback port in a temporary directory and killed at the end.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from importlib import resources
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from streamflow.log.kafka_transport import KafkaTransport

BOOTSTRAP_ENV = "STREAMFLOW_KAFKA_BOOTSTRAP"
START_TIMEOUT = 60.0
START_ATTEMPTS = 5
#: Short waits so that tests against a test broker stay quick.
TEST_CONSUMER_CONFIG = {"fetch.wait.max.ms": 50}
SESSION_TIMEOUT_MS = 6000


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kafka: needs a Kafka-protocol broker (noida-db, or STREAMFLOW_KAFKA_BOOTSTRAP)"
    )


def _noida_binary() -> str | None:
    """Return the noida-db executable itself (not its Python wrapper), if installed."""
    if importlib.util.find_spec("noida_db") is not None:
        path = resources.files("noida_db").joinpath("noida-db")
        if path.is_file():
            return str(path)
    return shutil.which("noida-db")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class NoidaBroker:
    """A noida-db process serving only Kafka on 127.0.0.1."""

    def __init__(self, binary: str, data: Path) -> None:
        self.binary = binary
        self.data = data
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data.parent / "noida-db.log"

    def start(self) -> None:
        """Start on a free port (retrying on a port race) and wait until it accepts."""
        for _ in range(START_ATTEMPTS):
            self.port = _free_port()
            args = [self.binary, "start", "--data-dir", str(self.data), "--host", "127.0.0.1"]
            args += ["--only", "kafka", "--kafka-port", str(self.port)]
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
                )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.process.poll() is None:
                if _listening(self.port):
                    return
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"noida-db did not start; see {self.log}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return ``bootstrap.servers`` of the test cluster (started here when needed)."""
    if importlib.util.find_spec("confluent_kafka") is None:
        pytest.skip("confluent-kafka is not installed: pip install 'streamflow-trio[kafka]'")
    given = os.environ.get(BOOTSTRAP_ENV)
    if given:
        yield given
        return
    binary = _noida_binary()
    if binary is None:
        pytest.skip(f"no Kafka broker: install noida-db or set {BOOTSTRAP_ENV}=host:port")
    broker = NoidaBroker(binary, tmp_path_factory.mktemp("noida") / "data")
    broker.start()
    try:
        yield f"127.0.0.1:{broker.port}"
    finally:
        broker.stop()


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
