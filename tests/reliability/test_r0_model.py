"""R0: the log against a plain-list model, with crashes (SimDisk power loss) between steps.

A hypothesis ``RuleBasedStateMachine`` appends, reads, rolls, applies retention,
compacts, closes and reopens, crashes (power loss) and reopens, and crashes in
the middle of an operation at each storage failpoint, on a ``SimDisk``. The
topic uses ``fsync="always"``, so every append that returned must survive any
crash; an append cut short by a crash may or may not be there.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamflow import failpoint
from streamflow.log import Log, Message

from .harness import report, soak
from .simdisk import SimDisk

if TYPE_CHECKING:
    from streamflow.log.partition import Partition

Row = tuple[int, Any, Any, int]  # offset, key, value, timestamp
RETENTION_MS = 50_000
DELETE_RETENTION_MS = 20_000
KEYS = st.one_of(st.none(), st.integers(0, 7))
VALUES = st.one_of(st.none(), st.text(max_size=150), st.integers(-(1 << 63), (1 << 64) - 1))
CRASH_POINTS = (
    "log.after_write",
    "log.after_fsync",
    "log.mid_roll",
    "log.mid_index_write",
    "log.mid_snapshot_write",
    "log.mid_retention_delete",
    "log.mid_compaction_swap",
)
FIGURES: dict[str, int] = {"examples": 0, "steps": 0, "crashes": 0, "failpoint_crashes": 0}


class Crash(BaseException):
    """Stands for the process dying at a failpoint."""


def _raise_crash() -> None:
    raise Crash


def read_all(p: Partition) -> list[Row]:
    rows: list[Row] = []
    offset = p.start_offset
    while offset < p.end_offset:
        records = p.read(offset, max_records=1000)
        if not records:
            break
        rows.extend((r.offset, r.key, r.value, r.timestamp) for r in records)
        offset = records[-1].offset + 1
    return rows


def latest_view(rows: list[Row]) -> dict[Any, Any]:
    """Return key -> newest value, a tombstone meaning "absent"."""
    view: dict[Any, Any] = {}
    for _, key, value, _ in rows:
        if key is None:
            continue
        if value is None:
            view.pop(key, None)
        else:
            view[key] = value
    return view


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="r0-"))
        self.disk = SimDisk(seed=0)
        self.now = 1_000_000
        self.log = self._open()
        self.log.create_topic(
            "t",
            segment_bytes=4096,
            fsync="always",
            cleanup_policy="compact,delete",
            retention_ms=RETENTION_MS,
            delete_retention_ms=DELETE_RETENTION_MS,
        )
        self.model: list[Row] = []
        self.end = 0
        FIGURES["examples"] += 1

    def _open(self) -> Log:
        return Log.open(self.root, clock=lambda: self.now, files=self.disk)

    @property
    def p(self) -> Partition:
        return self.log.partition("t", 0)

    def teardown(self) -> None:
        failpoint.disarm()
        self.log.abandon()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- rules ---------------------------------------------------------------------------

    @rule(batch=st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=12))
    def append(self, batch: list[tuple[Any, Any]]) -> None:
        FIGURES["steps"] += 1
        messages = [Message(key=k, value=v, timestamp=self.now) for k, v in batch]
        first = self.p.append(messages)
        assert first == self.end
        for i, (k, v) in enumerate(batch):
            self.model.append((first + i, k, v, self.now))
        self.end = first + len(batch)

    @rule(ms=st.integers(1, 30_000))
    def advance_clock(self, ms: int) -> None:
        self.now += ms

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        FIGURES["steps"] += 1
        start = self.p.start_offset
        offset = data.draw(st.integers(start, self.end))
        limit = data.draw(st.integers(1, 50))
        got = [(r.offset, r.key, r.value, r.timestamp) for r in self.p.read(offset, limit)]
        assert got == [row for row in self.model if row[0] >= offset][:limit]

    @rule()
    def roll(self) -> None:
        FIGURES["steps"] += 1
        self.p.roll()

    @rule()
    def retention(self) -> None:
        FIGURES["steps"] += 1
        self.log.enforce_retention()
        self._adopt_retention(self.now - RETENTION_MS)

    @rule()
    def compact(self) -> None:
        FIGURES["steps"] += 1
        self.log.compact("t")
        self._adopt_compaction(self.now - DELETE_RETENTION_MS)

    @rule()
    def close_reopen(self) -> None:
        FIGURES["steps"] += 1
        self.log.close()
        self.log = self._open()
        self._check_exact()

    @rule(seed=st.integers(0, 1 << 32))
    def crash_reopen(self, seed: int) -> None:
        FIGURES["steps"] += 1
        FIGURES["crashes"] += 1
        self.log.abandon()
        self.disk.rng.seed(seed)
        self.disk.crash()
        self.log = self._open()
        self._check_exact()

    @precondition(lambda self: self.end > 0)
    @rule(
        point=st.sampled_from(CRASH_POINTS),
        hit=st.integers(1, 2),
        batch=st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=5),
    )
    def crash_at_failpoint(self, point: str, hit: int, batch: list[tuple[Any, Any]]) -> None:
        """Run a step that reaches *point*, die there, lose power, reopen."""
        FIGURES["steps"] += 1
        failpoint.arm(point, hit, _raise_crash)
        before, end_before = list(self.model), self.end
        crashed = False
        try:
            if point in ("log.after_write", "log.after_fsync"):
                self.append(batch)
            elif point == "log.mid_retention_delete":
                self.log.enforce_retention()
            elif point == "log.mid_compaction_swap":
                self.log.compact("t")
            else:
                self.p.roll()
                self.log.close()
                self.log = self._open()
        except Crash:
            crashed = True
        finally:
            failpoint.disarm()
        if not crashed:
            # the point was not reached; bring the model along with what ran
            if point == "log.mid_retention_delete":
                self._adopt_retention(self.now - RETENTION_MS)
            elif point == "log.mid_compaction_swap":
                self._adopt_compaction(self.now - DELETE_RETENTION_MS)
            self._check_exact()
            return
        FIGURES["failpoint_crashes"] += 1
        self.log.abandon()
        self.disk.crash()
        self.log = self._open()
        rows = read_all(self.p)
        if point in ("log.after_write", "log.after_fsync"):
            # the batch in flight was never acknowledged: there or not, whole
            self.model, self.end = before, end_before
            extra = rows[len(self.model) :]
            assert rows[: len(self.model)] == self.model
            assert len(extra) in (0, len(batch)), extra
            if point == "log.after_fsync":
                assert len(extra) == len(batch), "an fsynced batch was lost"
            self.model = rows
            self.end = self.p.end_offset
        elif point == "log.mid_retention_delete":
            self._adopt_retention(self.now - RETENTION_MS)
        elif point == "log.mid_compaction_swap":
            self._adopt_compaction(self.now - DELETE_RETENTION_MS)
        else:
            self._check_exact()

    # -- checks --------------------------------------------------------------------------

    def _check_exact(self) -> None:
        assert self.p.end_offset == self.end
        assert read_all(self.p) == self.model

    def _adopt_retention(self, cutoff: int) -> None:
        rows = read_all(self.p)
        removed = [row for row in self.model if row[0] < self.p.start_offset]
        assert all(row[3] < cutoff for row in removed), "retention removed a fresh record"
        assert rows == [row for row in self.model if row[0] >= self.p.start_offset]
        self.model = rows

    def _adopt_compaction(self, cutoff: int) -> None:
        rows = read_all(self.p)
        kept = {row[0] for row in rows}
        assert all(row in self.model for row in rows), "compaction changed a record"
        newest: dict[Any, int] = {}
        for offset, key, _, _ in self.model:
            if key is not None:
                newest[key] = offset
        for row in self.model:
            offset, key, value, ts = row
            if offset in kept:
                continue
            assert key is not None, f"compaction removed an unkeyed record {row}"
            superseded = newest[key] > offset
            expired_tombstone = value is None and ts < cutoff
            assert superseded or expired_tombstone, f"compaction removed a live record {row}"
        assert latest_view(rows) == latest_view(self.model)
        self.model = rows

    @invariant()
    def offsets_agree(self) -> None:
        assert self.p.end_offset == self.end


MAX_EXAMPLES = 5000 if soak() else 300
STEPS = 50

TestLogModel = LogMachine.TestCase
TestLogModel.settings = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_zz_r0_report() -> None:
    """Write R0's figures (runs after the state machine in this module)."""
    report(
        "R0",
        0,
        max_examples=MAX_EXAMPLES,
        steps_per_example=STEPS,
        failures=0,
        when=int(time.time()),
        **FIGURES,
    )
