"""Run crash tests: child processes with a READY handshake, kills, pauses, seeds, figures.

Importable by any test. A child is a fresh interpreter (``python -m ...`` or
``python -c ...``, never a fork of a process that opened LMDB or trio) in its
own session; it prints ``READY <port>`` (or ``READY <anything>``) once it is
ready, so nothing sleeps. ``Child.kill()`` sends ``SIGKILL`` to the recorded
pid only and checks the exit status; ``pause()``/``resume()`` send
``SIGSTOP``/``SIGCONT``.

Seeds: ``seed()`` takes ``$STREAMFLOW_SEED`` or draws one; the conftest prints
it when a test fails, so ``STREAMFLOW_SEED=<n> pytest <test>`` replays it.

Figures: ``report(test_id, seed, **figures)`` appends one JSON line to
``$STREAMFLOW_RELIABILITY_REPORT`` (default ``<pytest basetemp>/reliability.jsonl``,
printed at the end of the run).

Client processes (R3, R10, R11): ``start_producer`` and ``start_reader`` run
``python -m tests.reliability.harness producer|reader ...``, which send unique
values ``"<producer>:<seq>"`` through an idempotent producer, or poll a topic,
and write what happened as JSON lines (``{"invoke": [...]}``, ``{"ok": [[value,
partition, offset], ...]}``, ``{"info": [...]}``, ``{"polled": [[partition,
offset, value], ...]}``); ``load_sends``/``load_polls`` feed those files to a
``History``, and ``read_topic`` reads a whole topic back for its final log.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .history import History

READY_TIMEOUT: Final = 60.0
REPO: Final = Path(__file__).resolve().parents[2]

#: Set by conftest to a file under pytest's basetemp.
REPORT_PATH: list[Path] = []


def seed() -> int:
    """Return the run's seed: ``$STREAMFLOW_SEED`` or a fresh random one."""
    given = os.environ.get("STREAMFLOW_SEED")
    return int(given) if given else random.randrange(1 << 31)


def soak() -> bool:
    """Return whether the soak tier (larger counts) is running."""
    return os.environ.get("STREAMFLOW_SOAK") == "1"


def report_path() -> Path:
    """Return the JSON-lines file figures go to."""
    given = os.environ.get("STREAMFLOW_RELIABILITY_REPORT")
    if given:
        return Path(given)
    if REPORT_PATH:
        return REPORT_PATH[0]
    return REPO / "tests" / "reliability" / "report.jsonl"


def report(test_id: str, seed: int, **figures: Any) -> dict[str, Any]:
    """Append one JSON line of figures for *test_id*; return the line's data."""
    line = {"test": test_id, "seed": seed, "tier": "soak" if soak() else "ci", **figures}
    path = report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    print("FIGURES", json.dumps(line, sort_keys=True))
    return line


def percentile(values: Sequence[float], q: float) -> float:
    """Return the *q*-th percentile (0-100) of *values*, 0.0 when empty."""
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return float(cuts[min(max(int(q) - 1, 0), 98)])


def child_env(failpoint: str | None = None, **extra: str) -> dict[str, str]:
    """Return the environment for a child: unbuffered, the repo importable, *failpoint* armed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("STREAMFLOW_FAILPOINT", None)
    env.pop("STREAMFLOW_TOKEN", None)
    if failpoint is not None:
        env["STREAMFLOW_FAILPOINT"] = failpoint
    env.update(extra)
    return env


class Child:
    """A child process with a ``READY`` handshake, killed by its recorded pid."""

    def __init__(self, args: list[str], *, log_path: Path, env: dict[str, str]) -> None:
        self.args = args
        self.log_path = log_path
        self.started = time.monotonic()
        with open(log_path, "ab") as stderr:
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                cwd=REPO,
            )
        self.pid = self.process.pid
        self.ready_words: list[str] = []

    @property
    def stdout(self) -> IO[bytes]:
        """Return the child's stdout pipe."""
        assert self.process.stdout is not None
        return self.process.stdout

    def readline(self, timeout: float = READY_TIMEOUT) -> str:
        """Return the next stdout line ('' at end of file); raise on timeout."""
        fd = self.stdout.fileno()
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"no line from pid {self.pid} in {timeout} s; {self.log_path}")
            chunk = os.read(fd, 1)
            if not chunk:
                break
            line += chunk
        return line.decode()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> list[str]:
        """Wait for the ``READY ...`` line and return its words after READY."""
        while True:
            line = self.readline(timeout)
            if not line:
                raise RuntimeError(
                    f"pid {self.pid} exited ({self.process.wait()}) before READY; "
                    f"see {self.log_path}:\n{self.tail_log()}"
                )
            words = line.split()
            if words and words[0] == "READY":
                self.ready_words = words[1:]
                return self.ready_words

    def tail_log(self, n: int = 30) -> str:
        """Return the last *n* lines of the child's stderr."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        """Return whether the process still runs."""
        return self.process.poll() is None

    def kill(self) -> int | None:
        """SIGKILL the recorded pid (if alive), reap it, and return its exit status."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            code = self.process.wait(timeout=60)
            assert code == -signal.SIGKILL, code
        self.close()
        return self.process.returncode

    def pause(self) -> None:
        """SIGSTOP the process."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the process."""
        os.kill(self.pid, signal.SIGCONT)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the process and return its exit status."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.close()
        return code

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to end by itself and return its exit status."""
        code = self.process.wait(timeout=timeout)
        return code

    def close(self) -> None:
        """Close the stdout pipe."""
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.process.stdout.close()


def start_python(
    code_or_module: str,
    *args: str,
    log_path: Path,
    module: bool = False,
    failpoint: str | None = None,
    env: dict[str, str] | None = None,
) -> Child:
    """Start ``python -c CODE args`` (or ``python -m MODULE args``) as a ``Child``."""
    flag = "-m" if module else "-c"
    return Child(
        [sys.executable, flag, code_or_module, *args],
        log_path=log_path,
        env=env if env is not None else child_env(failpoint),
    )


class Broker:
    """A broker subprocess on 127.0.0.1, restartable on the same port."""

    def __init__(self, data: Path, *, extra_args: Sequence[str] = ()) -> None:
        self.data = data
        self.extra_args = list(extra_args)
        self.port = 0
        self.child: Child | None = None
        self.log_path = data.parent / f"{data.name}-broker.log"
        self.restarts = 0
        self.recovery_seconds: list[float] = []

    @property
    def url(self) -> str:
        """Return the ``tcp://`` URL."""
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, failpoint: str | None = None, env: dict[str, str] | None = None) -> Child:
        """Start it (same port after the first start) and wait for ``READY <port>``."""
        args = ["--data", str(self.data), "--port", str(self.port), *self.extra_args]
        started = time.monotonic()
        self.child = start_python(
            "streamflow.log.broker",
            *args,
            log_path=self.log_path,
            module=True,
            env=env if env is not None else child_env(failpoint),
        )
        words = self.child.wait_ready()
        self.recovery_seconds.append(time.monotonic() - started)
        self.port = int(words[0])
        return self.child

    def kill(self) -> None:
        """SIGKILL it (if running)."""
        if self.child is not None:
            self.child.kill()

    def restart(self, failpoint: str | None = None) -> None:
        """SIGKILL and start again on the same port."""
        self.kill()
        self.restarts += 1
        self.start(failpoint)


# -- client processes -------------------------------------------------------------------------


def start_producer(
    url: str,
    topic: str,
    name: str,
    sends_path: Path,
    *,
    log_path: Path,
    stop_path: Path,
    tasks: int = 2,
    chunk: int = 100,
    count: int = 1 << 40,
    pause_ms: int = 0,
    churn_topic: str | None = None,
) -> Child:
    """Start a producer process; it prints ``READY`` once connected.

    Each of its *tasks* sends values ``"<name>.<task>:<seq>"`` (seq from 0) in
    chunks of *chunk* with ``send_many`` (no key: round-robin), one chunk at a
    time, until *count* values per task are sent or *stop_path* exists, and
    writes every send's fate to *sends_path* (module docstring). With
    *churn_topic*, one more task writes keyed records there (few keys, so
    compaction and retention have work). It prints ``DONE`` at the end.
    """
    args = [url, topic, name, str(sends_path), str(stop_path)]
    args += ["--tasks", str(tasks), "--chunk", str(chunk), "--count", str(count)]
    args += ["--pause-ms", str(pause_ms)]
    if churn_topic is not None:
        args += ["--churn", churn_topic]
    return start_python(
        "tests.reliability.harness", "producer", *args, log_path=log_path, module=True
    )


def start_reader(
    url: str,
    topic: str,
    polls_path: Path,
    *,
    log_path: Path,
    stop_path: Path,
    max_records: int = 2000,
    pause_ms: int = 0,
    drain: bool = True,
) -> Child:
    """Start a consumer process reading *topic* from the earliest offset.

    It prints ``READY`` once its consumer is open, writes every poll to
    *polls_path*, sleeps *pause_ms* after each poll (a slow consumer), rides
    out broker restarts, and stops at the first empty poll once *stop_path*
    exists (at once, without *drain*), printing ``DONE``.
    """
    args = [url, topic, str(polls_path), str(stop_path)]
    args += ["--max-records", str(max_records), "--pause-ms", str(pause_ms)]
    if not drain:
        args.append("--no-drain")
    return start_python(
        "tests.reliability.harness", "reader", *args, log_path=log_path, module=True
    )


def _json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a killed writer may leave half a line
    return out


def load_sends(history: History, path: Path) -> int:
    """Feed a producer's sends file to *history*; return how many sends were acknowledged.

    Values invoked without an outcome (the producer was stopped, or still
    waiting) count as unknown (``info``).
    """
    acked = 0
    pending: set[str] = set()
    for line in _json_lines(path):
        for value in line.get("invoke", ()):
            history.invoke(value)
            pending.add(value)
        for value, partition, offset in line.get("ok", ()):
            history.ok(value, partition, offset)
            pending.discard(value)
            acked += 1
        for value in line.get("info", ()):
            history.info(value)
            pending.discard(value)
    for value in pending:
        history.info(value)
    return acked


def load_polls(history: History, consumer: str, path: Path) -> int:
    """Feed a reader's polls file to *history*; return how many records it read."""
    n = 0
    for line in _json_lines(path):
        for partition, offset, value in line.get("polled", ()):
            history.poll(consumer, partition, offset, value)
            n += 1
    return n


def ack_latencies_ms(path: Path) -> list[float]:
    """Return how long each acknowledged ``send_many`` chunk in a sends file took (ms)."""
    return [float(line["ms"]) for line in _json_lines(path) if "ms" in line]


def count_acks(path: Path, start: int = 0) -> tuple[int, int]:
    """Return ``(acknowledged values, next position)`` in *path* from byte *start* on.

    Reads only whole lines, so calling it again from the returned position
    counts only what was written since.
    """
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return 0, start
    end = data.rfind(b"\n") + 1
    n = 0
    for line in data[:end].splitlines():
        if line.startswith(b'{"ok"'):
            n += len(json.loads(line)["ok"])
    return n, start + end


async def read_topic(url: str, topic: str, timeout: float = 120.0) -> dict[int, list[Any]]:
    """Return every record of *topic* as ``{partition: [(offset, value), ...]}``."""
    import trio

    import streamflow

    out: dict[int, list[Any]] = {}
    with trio.fail_after(timeout):
        async with streamflow.connect(url, reconnect_timeout=timeout) as client:
            desc = await client.describe(topic)
            ends = {p.partition: p.end_offset for p in desc.partitions}
            out = {p: [] for p in ends}
            async with client.consumer(topic) as consumer:
                done = 0
                while done < len(ends):
                    for r in await consumer.poll(max_records=10_000, timeout=0.2):
                        out[r.partition].append((r.offset, r.value))
                    done = 0
                    for p, end in ends.items():
                        done += end == 0 or await consumer.position(p) >= end
    return out


def _stop_check(path: str) -> Callable[[], bool]:
    return lambda: os.path.exists(path)


async def _run_producer(options: argparse.Namespace, out: IO[str]) -> None:
    import trio

    import streamflow

    stopped = _stop_check(options.stop)

    def write(kind: str, items: list[Any]) -> None:
        out.write(json.dumps({kind: items}) + "\n")

    async def run(producer: Any, task: int) -> None:
        seq = 0
        while seq < options.count and not stopped():
            values = [f"{options.name}.{task}:{s}" for s in range(seq, seq + options.chunk)]
            seq += options.chunk
            write("invoke", values)
            started = trio.current_time()
            try:
                metas = await producer.send_many(options.topic, values)
            except Exception as exc:  # outcome unknown: some may be stored
                print(f"send failed: {exc!r}", file=sys.stderr)
                write("info", values)
                continue
            rows = [[v, m.partition, m.offset] for v, m in zip(values, metas, strict=True)]
            ms = round((trio.current_time() - started) * 1000, 2)
            out.write(json.dumps({"ok": rows, "ms": ms}) + "\n")
            if options.pause_ms:
                await trio.sleep(options.pause_ms / 1000)

    async def churn(producer: Any, topic: str) -> None:
        i = 0
        while not stopped():
            values = list(range(i, i + 50))
            try:
                await producer.send_many(topic, values, keys=[v % 16 for v in values])
            except Exception as exc:
                print(f"churn send failed: {exc!r}", file=sys.stderr)
            i += 50

    async with streamflow.connect(options.url, reconnect_timeout=120) as client:
        async with client.producer(delivery_timeout=600) as producer:
            print("READY", flush=True)
            async with trio.open_nursery() as nursery:
                if options.churn:
                    nursery.start_soon(churn, producer, options.churn)
                async with trio.open_nursery() as senders:
                    for task in range(options.tasks):
                        senders.start_soon(run, producer, task)
                nursery.cancel_scope.cancel()
    print("DONE", flush=True)


async def _run_reader(options: argparse.Namespace, out: IO[str]) -> None:
    import trio

    import streamflow
    from streamflow.errors import BrokerUnavailable

    stopped = _stop_check(options.stop)
    async with streamflow.connect(options.url, reconnect_timeout=120) as client:
        async with client.consumer(options.topic) as consumer:
            print("READY", flush=True)
            while True:
                try:
                    records = await consumer.poll(max_records=options.max_records, timeout=0.5)
                except BrokerUnavailable as exc:
                    print(f"poll failed: {exc!r}", file=sys.stderr)
                    continue
                if records:
                    rows = [[r.partition, r.offset, r.value] for r in records]
                    out.write(json.dumps({"polled": rows}) + "\n")
                if (not records or options.no_drain) and stopped():
                    break
                if options.pause_ms:
                    await trio.sleep(options.pause_ms / 1000)
    print("DONE", flush=True)


def _main(argv: list[str]) -> None:
    import trio

    parser = argparse.ArgumentParser(prog="python -m tests.reliability.harness")
    roles = parser.add_subparsers(dest="role", required=True)
    producer = roles.add_parser("producer")
    for name in ("url", "topic", "name", "sends", "stop"):
        producer.add_argument(name)
    producer.add_argument("--tasks", type=int, default=2)
    producer.add_argument("--chunk", type=int, default=100)
    producer.add_argument("--count", type=int, default=1 << 40)
    producer.add_argument("--pause-ms", type=int, default=0)
    producer.add_argument("--churn", default=None)
    reader = roles.add_parser("reader")
    for name in ("url", "topic", "polls", "stop"):
        reader.add_argument(name)
    reader.add_argument("--max-records", type=int, default=2000)
    reader.add_argument("--pause-ms", type=int, default=0)
    reader.add_argument("--no-drain", action="store_true")
    options = parser.parse_args(argv)
    path = options.sends if options.role == "producer" else options.polls
    with open(path, "a", buffering=1) as out:
        trio.run(_run_producer if options.role == "producer" else _run_reader, options, out)


if __name__ == "__main__":
    _main(sys.argv[1:])
