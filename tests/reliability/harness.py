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
"""

from __future__ import annotations

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
    from collections.abc import Sequence

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
