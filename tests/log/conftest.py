"""Fixtures for the client and broker tests: broker subprocesses and log targets."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.kafka.noida import kafka_bootstrap_servers, register_marker

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

READY_TIMEOUT = 60.0


class BrokerProcess:
    """A broker subprocess on 127.0.0.1 with a port chosen by the OS."""

    def __init__(
        self, data: Path, *, token: str | None = None, extra_args: list[str] | None = None
    ) -> None:
        self.data = data
        self.token = token
        self.extra_args = extra_args or []
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path = data.parent / f"{data.name}-broker.log"

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, port: int = 0, failpoint: str | None = None) -> None:
        """Start the broker (on *port*, 0 = any) and wait for its READY line.

        *failpoint* (``name:n``) makes the broker SIGKILL itself on the n-th hit.
        """
        args = [sys.executable, "-m", "streamflow.log.broker", "--data", str(self.data)]
        args += ["--port", str(port)]
        if self.token is not None:
            args += ["--token", self.token]
        args += self.extra_args
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("STREAMFLOW_TOKEN", None)
        env.pop("STREAMFLOW_FAILPOINT", None)
        if failpoint is not None:
            env["STREAMFLOW_FAILPOINT"] = failpoint
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=stderr, env=env, start_new_session=True
            )
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + READY_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                self.kill()
                raise TimeoutError(f"broker did not print READY; see {self.stderr_path}")
            chunk = os.read(fd, 1)
            if not chunk:
                raise RuntimeError(f"broker exited before READY; see {self.stderr_path}")
            line += chunk
        word, number = line.decode().split()
        assert word == "READY"
        self.port = int(number)

    def kill(self) -> None:
        """SIGKILL the broker (unless it already died) and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            assert self.process.wait(timeout=30) == -signal.SIGKILL
        self._close_pipe()

    def exited(self) -> bool:
        """Return whether the broker process has ended."""
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> int:
        """SIGTERM the broker and return its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._close_pipe()
        return code

    def restart(self, failpoint: str | None = None) -> None:
        """SIGKILL the broker and start it again on the same port."""
        self.kill()
        self.start(self.port, failpoint)

    def _close_pipe(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[type[BrokerProcess]]:
    """Make brokers that are killed at the end of the test."""
    made: list[BrokerProcess] = []

    class Tracked(BrokerProcess):
        def __init__(
            self, data: Path, *, token: str | None = None, extra_args: list[str] | None = None
        ) -> None:
            super().__init__(data, token=token, extra_args=extra_args)
            made.append(self)

    yield Tracked
    for broker in made:
        broker.kill()


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for a whole test module (tests use their own topic names)."""
    broker = BrokerProcess(tmp_path_factory.mktemp("broker") / "data")
    broker.start()
    yield broker
    broker.kill()


def pytest_configure(config: pytest.Config) -> None:
    register_marker(config)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return ``bootstrap.servers`` of a Kafka-protocol test cluster (``tests/kafka/noida.py``)."""
    yield from kafka_bootstrap_servers(tmp_path_factory)


@pytest.fixture(params=["embedded", "broker", pytest.param("kafka", marks=pytest.mark.kafka)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A log target: an embedded directory, a broker subprocess's URL, or a Kafka cluster's.

    The Kafka target is skipped (with the reason) where no Kafka-protocol broker can run.
    """
    if request.param == "embedded":
        return str(tmp_path / "log")
    if request.param == "kafka":
        bootstrap: str = request.getfixturevalue("kafka_bootstrap")
        return f"kafka://{bootstrap}"
    broker: BrokerProcess = request.getfixturevalue("shared_broker")
    return broker.url
