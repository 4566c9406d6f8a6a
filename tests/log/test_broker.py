"""The broker process: limits, reconnects, clean shutdown, auth and logging."""

from __future__ import annotations

import logging
import signal
from functools import partial
from typing import TYPE_CHECKING

import pytest
import trio

import streamflow
from streamflow import errors
from streamflow.log.broker import serve
from streamflow.log.naming import CLEAN_SHUTDOWN_FILE
from streamflow.log.transport import Columns

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import BrokerProcess

LONG = 60


async def test_many_requests_in_flight_on_one_connection(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    port = await nursery.start(partial(serve, tmp_path / "data", port=0, max_in_flight=8))
    with trio.fail_after(LONG):
        async with streamflow.connect(f"tcp://127.0.0.1:{port}") as client:
            await client.create_topic("t", partitions=4)
            transport = client.transport
            results: dict[int, int] = {}
            parked: list[object] = []

            async def park() -> None:
                # Long polls hold broker slots; the rest must still be answered.
                parked.append(await transport.fetch({("t", 3): 0}, timeout=1.0))

            async def append(i: int) -> None:
                results[i] = await transport.append("t", i % 3, Columns([i], [i]))

            async with trio.open_nursery() as inner:
                for _ in range(4):
                    inner.start_soon(park)
                for i in range(300):
                    inner.start_soon(append, i)
            assert len(results) == 300
            assert parked == [{}] * 4
            for p in range(3):
                offsets = sorted(o for i, o in results.items() if i % 3 == p)
                assert offsets == list(range(100))
        nursery.cancel_scope.cancel()


async def test_idle_connections_are_closed(tmp_path: Path, nursery: trio.Nursery) -> None:
    port = await nursery.start(partial(serve, tmp_path / "data", port=0, idle_timeout=0.3))
    with trio.fail_after(LONG):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            assert await stream.receive_some() == b""  # closed without a word
        async with streamflow.connect(f"tcp://127.0.0.1:{port}") as client:
            # The client reconnects transparently after the broker dropped it.
            await client.topics()
            await trio.sleep(0.6)
            assert await client.topics() == []
    nursery.cancel_scope.cancel()


async def test_non_loopback_host_without_token_logs_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamflow")
    with trio.fail_after(LONG):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, tmp_path / "data", host="0.0.0.0", port=0))
            nursery.cancel_scope.cancel()
    assert any("without a token" in r.getMessage() for r in caplog.records)
    assert any("broker serving" in r.getMessage() for r in caplog.records)


async def test_client_rides_over_a_broker_restart(
    tmp_path: Path, broker_factory: type[BrokerProcess]
) -> None:
    broker = broker_factory(tmp_path / "data")
    broker.start()
    with trio.fail_after(LONG):
        async with streamflow.connect(broker.url, reconnect_timeout=30) as client:
            await client.create_topic("t")
            async with client.producer() as producer:
                await producer.send("t", "before")
                await trio.to_thread.run_sync(broker.restart)
                # Retried until the broker is back; stored once.
                await producer.send("t", "after")
            async with client.consumer("t") as consumer:
                got: list[object] = []
                while len(got) < 2:
                    got.extend(r.value for r in await consumer.poll(timeout=1.0))
            assert got == ["before", "after"]


async def test_calls_fail_with_broker_unavailable_when_it_is_gone(
    tmp_path: Path, broker_factory: type[BrokerProcess]
) -> None:
    broker = broker_factory(tmp_path / "data")
    broker.start()
    with trio.fail_after(LONG):
        async with streamflow.connect(broker.url, reconnect_timeout=1.0) as client:
            await client.create_topic("t")
            async with trio.open_nursery() as nursery:
                failures: list[BaseException] = []

                async def parked_fetch() -> None:
                    try:
                        await client.transport.fetch({("t", 0): 0}, timeout=30)
                    except errors.BrokerUnavailable as exc:
                        failures.append(exc)

                nursery.start_soon(parked_fetch)
                await trio.sleep(0.3)
                await trio.to_thread.run_sync(broker.kill)
            assert len(failures) == 1  # the call in flight fails at once
            with pytest.raises(errors.BrokerUnavailable):
                await client.topics()  # and reconnecting gives up after 1 s
    with pytest.raises(errors.BrokerUnavailable):
        async with streamflow.connect(broker.url, reconnect_timeout=0.2):
            pass


async def test_token_is_checked(tmp_path: Path, broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory(tmp_path / "data", token="s3cret")
    broker.start()
    with trio.fail_after(LONG):
        with pytest.raises(errors.AuthenticationFailed):
            async with streamflow.connect(broker.url):
                pass
        with pytest.raises(errors.AuthenticationFailed):
            async with streamflow.connect(broker.url, token="wrong"):
                pass
        async with streamflow.connect(broker.url, token="s3cret") as client:
            assert await client.topics() == []


def test_sigterm_shuts_down_cleanly(tmp_path: Path, broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory(tmp_path / "data")
    broker.start()

    async def use() -> None:
        with trio.fail_after(LONG):
            async with streamflow.connect(broker.url) as client:
                await client.create_topic("t", partitions=2)
                async with client.producer() as producer:
                    await producer.send_many("t", list(range(10)))

    trio.run(use)
    assert broker.stop() == 0
    assert broker.process is not None
    assert broker.process.returncode != -signal.SIGTERM
    assert list((tmp_path / "data").rglob(CLEAN_SHUTDOWN_FILE))
    text = broker.stderr_path.read_text()
    for line in ("broker serving", "topic t created", "received SIGTERM", "broker stopped"):
        assert line in text
