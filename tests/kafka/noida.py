"""Start a noida-db Kafka-protocol broker for tests, or use the cluster named in the environment.

``kafka_bootstrap_servers`` is what the ``kafka_bootstrap`` fixtures of
``tests/kafka`` and ``tests/log`` call: with ``STREAMFLOW_KAFKA_BOOTSTRAP`` set
(``host:port[,host:port]``) it yields that cluster; otherwise it starts
noida-db on a free loopback port in a temporary directory and stops it at the
end. It skips the test, with the reason, when confluent-kafka or the broker
binary is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from importlib import resources
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

BOOTSTRAP_ENV = "STREAMFLOW_KAFKA_BOOTSTRAP"
START_TIMEOUT = 60.0
START_ATTEMPTS = 5


def register_marker(config: pytest.Config) -> None:
    """Register the ``kafka`` marker (for ``--strict-markers``)."""
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


def kafka_bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield ``bootstrap.servers`` of the test cluster (started here when needed)."""
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
