"""R8: disk full and I/O errors at every write, fsync, rename and unlink site.

SQLite-style countdown: a fault-free run of a workload (appends across rolls,
compaction, retention, close) counts its file operations; then, for every n,
the n-th operation fails with ``ENOSPC`` or ``EIO``, once or for good. Checks:

* every failure reaches the caller as ``StorageError`` or ``PartitionOffline``
  (a typed error saying what to do), never as a bare ``OSError`` or a crash;
* an append that raised ``StorageError`` is not in the log, then or later;
* a failed fsync takes the partition offline: later appends raise
  ``PartitionOffline`` and are never acknowledged;
* once the fault clears ("space returns") appends succeed again, after a
  reopen if the partition went offline;
* after a final power loss every acknowledged record is there, nothing twice,
  nothing that was never sent.

Plus a real subprocess writing under ``RLIMIT_FSIZE`` (writes past it raise
``EFBIG``).
"""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from streamflow.errors import PartitionOffline, StorageError, StreamflowError
from streamflow.log import Log, Message

from .harness import REPO, child_env, report
from .simdisk import KINDS, SimDisk

if TYPE_CHECKING:
    from pathlib import Path

    from streamflow.log.partition import Partition


class Run:
    """One workload on a SimDisk, recording what was acknowledged and what failed."""

    def __init__(self, root: Path, disk: SimDisk) -> None:
        self.root = root
        self.disk = disk
        self.now = 1_000_000
        self.acked: list[str] = []
        self.rejected: set[str] = set()  # StorageError: must never appear
        self.unknown: set[str] = set()  # PartitionOffline mid-append: may appear once
        self.errors: Counter[str] = Counter()
        self.offline_seen = False
        self.log = Log.open(root, clock=lambda: self.now, files=disk)

    @property
    def p(self) -> Partition:
        return self.log.partition("t", 0)

    def step(self, action: str, value: str = "") -> None:
        try:
            if action == "append":
                self.p.append([Message(key=int(value.split("-")[1]) % 3, value=value)])
                self.acked.append(value)
            elif action == "roll":
                self.p.roll()
            elif action == "compact":
                self.log.compact("t", now_ms=self.now + 10**9)
            elif action == "retention":
                self.log.enforce_retention(self.now + 10**9)
        except PartitionOffline:
            self.errors["PartitionOffline"] += 1
            self.offline_seen = True
            if value:
                self.unknown.add(value)
        except StorageError:
            self.errors["StorageError"] += 1
            if value:
                self.rejected.add(value)

    def workload(self, tag: str) -> None:
        for i in range(24):
            self.now += 10
            # lengths vary, so a shorter batch cannot hide a partial longer one
            self.step("append", f"{tag}-{i}-" + "v" * (37 * i % 400))
            if i in (8, 16):
                self.step("roll")
            if i == 12:
                self.step("compact")
            if i == 20:
                self.step("retention")

    def reopen(self) -> None:
        try:
            self.log.close()
        except StreamflowError as exc:
            self.errors[type(exc).__name__] += 1
        self.log = Log.open(self.root, clock=lambda: self.now, files=self.disk)


def setup_topic(root: Path, disk: SimDisk) -> Run:
    run = Run(root, disk)
    run.log.create_topic(
        "t",
        segment_bytes=4096,
        fsync="always",
        cleanup_policy="compact,delete",
        retention_bytes=8192,
        delete_retention_ms=0,
    )
    return run


def count_ops(tmp_path: Path) -> int:
    disk = SimDisk(0)
    run = setup_topic(tmp_path / "count", disk)
    before = sum(disk.ops.values())
    run.workload("w")
    run.reopen()
    total = sum(disk.ops.values()) - before
    run.log.close()
    return total


def test_every_disk_error_site_fails_cleanly_and_writes_resume(tmp_path: Path, seed: int) -> None:
    total = count_ops(tmp_path)
    figures: Counter[str] = Counter()
    cases = 0
    for code in (errno.ENOSPC, errno.EIO):
        for persistent in (False, True):
            for n in range(1, total + 1):
                cases += 1
                root = tmp_path / f"c{cases}"
                disk = SimDisk(seed + cases)
                run = setup_topic(root, disk)
                disk.fail(n, KINDS, code=code, persistent=persistent)
                run.workload("w")
                fired = sum(f.fired for f in disk.faults)
                figures["faults_injected"] += fired
                # space returns (or the device is fixed)
                disk.heal()
                if run.offline_seen:
                    figures["went_offline"] += 1
                    # an offline partition never takes a write until reopened
                    run.step("append", "offline-0-x")
                    assert "offline-0-x" not in run.acked
                    run.unknown.discard("offline-0-x")
                    run.rejected.add("offline-0-x")
                try:
                    run.reopen()
                except OSError:
                    pytest.fail(f"case {cases}: the log did not reopen after the fault cleared")
                run.workload("r")
                assert any(v.startswith("r-") for v in run.acked), "writes did not resume"
                run.log.abandon()
                disk.crash()
                with Log.open(root, files=disk) as log:
                    p = log.partition("t", 0)
                    stored = [r.value for r in p.read(p.start_offset, 100_000)]
                counts = Counter(stored)
                assert not [v for v, c in counts.items() if c > 1], "duplicate record"
                assert not set(stored) & run.rejected, "a rejected append was stored"
                sent = set(run.acked) | run.unknown
                assert set(stored) <= sent, "a record nobody sent was stored"
                # compaction and retention remove old records; the newest per key stay
                newest: dict[int, str] = {}
                for value in run.acked:
                    newest[int(value.split("-")[1]) % 3] = value
                assert set(newest.values()) <= set(stored), "an acknowledged record was lost"
                for name, k in run.errors.items():
                    figures[f"errors_{name}"] += k
    report(
        "R8",
        seed,
        sites=total,
        cases=cases,
        acked_lost=0,
        rejected_but_stored=0,
        raw_oserrors=0,
        **dict(figures),
    )


FSIZE_WRITER = textwrap.dedent(
    """
    import resource, sys
    from streamflow.errors import StorageError
    from streamflow.log import Log, Message
    path = sys.argv[1]
    log = Log.open(path)
    if not log.has_topic("t"):
        log.create_topic("t", fsync="always", segment_bytes=1 << 20)
    p = log.partition("t", 0)
    print("READY", p.end_offset, flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))
    acked = 0
    try:
        while True:
            p.append([Message(None, "x" * 1000)])
            acked += 1
    except StorageError as exc:
        print("ERROR", exc.errno, acked, flush=True)
    log.abandon()
    """
)


def test_file_size_limit_gives_a_clear_error_and_no_corruption(tmp_path: Path, seed: int) -> None:
    data = tmp_path / "log"
    run = subprocess.run(
        [sys.executable, "-c", FSIZE_WRITER, str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        cwd=REPO,
        check=True,
    )
    words = run.stdout.split()
    assert words[2] == "ERROR", run.stdout + run.stderr
    assert int(words[3]) == errno.EFBIG
    acked = int(words[4])
    with Log.open(data) as log:
        p = log.partition("t", 0)
        stored = p.read(0, 100_000)
        assert len(stored) == acked
        assert p.append([Message(None, "after")]) == acked
    report("R8-rlimit-fsize", seed, acked=acked, stored=len(stored), lost=0)


def test_a_partial_write_leaves_no_garbage_behind(tmp_path: Path) -> None:
    """A full disk mid-batch, then a shorter batch, then a roll: the log still opens."""
    disk = SimDisk(1)
    with Log.open(tmp_path, files=disk) as log:
        log.create_topic("t", fsync="always")
        p = log.partition("t", 0)
        p.append([Message(None, "first")])
        disk.fail(1, ["pwrite"], partial=500)
        with pytest.raises(StorageError, match="free disk space"):
            p.append([Message(None, "x" * 2000)])
        disk.heal()
        p.append([Message(None, "short")])
        p.roll()
        p.append([Message(None, "last")])
    with Log.open(tmp_path, files=disk) as log:
        assert [r.value for r in log.partition("t", 0).read(0)] == ["first", "short", "last"]
