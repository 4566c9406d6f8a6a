from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import msgpack
import pytest

from streamflow.errors import NotSerializable, StateStoreError
from streamflow.state.checkpoint import Checkpoint
from streamflow.state.store import StateStore
from streamflow.state.view import CachedView, encode

if TYPE_CHECKING:
    from pathlib import Path


def test_store_round_trips_changes_and_checkpoint(tmp_path: Path) -> None:
    checkpoint = Checkpoint(4, {("payments", 0): 120}, {"spend": 17}, {"alerts/0": 9})
    with StateStore.open(tmp_path / "t", ["spend", "n"]) as store:
        assert store.read_checkpoint() is None
        store.write(
            {"spend": [(encode("a"), encode(1.5)), (encode("b"), encode({"n": 2}))]},
            checkpoint.encode(),
        )
        store.write({"spend": [(encode("a"), None)], "n": [(encode(7), encode(7))]})
    with StateStore.open(tmp_path / "t", ["spend", "n"]) as store:
        assert store.scan("spend") == [(encode("b"), encode({"n": 2}))]
        assert store.get("n", encode(7)) == encode(7)
        assert store.get("n", encode(8)) is None
        assert store.count("spend") == 1
        data = store.read_checkpoint()
        assert data is not None
        assert Checkpoint.decode(data) == checkpoint


def test_stores_are_separate_databases(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "t", ["a", "b"]) as store:
        store.write({"a": [(b"k", b"1")], "b": [(b"k", b"2")]})
        assert store.get("a", b"k") == b"1"
        assert store.get("b", b"k") == b"2"
        with pytest.raises(StateStoreError, match="no store named 'c'"):
            store.get("c", b"k")


def test_digest_depends_only_on_content(tmp_path: Path) -> None:
    pairs = [(encode(i), encode(i * i)) for i in range(100)]
    with StateStore.open(tmp_path / "x", ["s"]) as x, StateStore.open(tmp_path / "y", ["s"]) as y:
        x.write({"s": pairs})
        y.write({"s": list(reversed(pairs))})
        assert x.digest("s") == y.digest("s")
        y.write({"s": [(encode(3), encode(10))]})
        assert x.digest("s") != y.digest("s")


def test_map_full_raises_a_clear_error_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "t", ["s"], map_size=1 << 20, max_map_size=1 << 20) as store:
        store.write({"s": [(b"first", b"x")]}, Checkpoint(1).encode())
        big = [(i.to_bytes(4, "big"), os.urandom(1000)) for i in range(2000)]
        with pytest.raises(StateStoreError, match=r"map_size=1048576 bytes.*max_map_size"):
            store.write({"s": big}, Checkpoint(2).encode())
        data = store.read_checkpoint()
        assert data is not None
        assert Checkpoint.decode(data).id == 1
        assert store.count("s") == 1


def test_map_grows_up_to_max_map_size(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "t", ["s"], map_size=1 << 20, max_map_size=1 << 24) as store:
        big = [(i.to_bytes(4, "big"), os.urandom(1000)) for i in range(2000)]
        store.write({"s": big})
        assert store.count("s") == 2000
        assert store.map_size > 1 << 20


def test_garbage_files_are_reported_as_unusable(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"not an lmdb file" * 1000)
    with pytest.raises(StateStoreError, match="rebuild it from the changelog"):
        StateStore.open(path, ["s"])


def test_bad_store_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="store name"):
        StateStore.open(tmp_path / "t", ["a/b"])


def test_stale_readers_of_killed_processes_are_cleared(tmp_path: Path) -> None:
    path = tmp_path / "t"
    with StateStore.open(path, ["s"], max_readers=2) as store:
        store.write({"s": [(b"k", b"v")]})
    holder = textwrap.dedent(
        f"""
        import sys, time, lmdb
        env = lmdb.open({str(path)!r}, max_dbs=2, max_readers=2)
        txn = env.begin()
        print("READY", flush=True)
        time.sleep(60)
        """
    )
    for _ in range(4):  # more kills than reader slots
        proc = subprocess.Popen(
            [sys.executable, "-c", holder], stdout=subprocess.PIPE, start_new_session=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"READY"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        proc.stdout.close()
        with StateStore.open(path, ["s"], max_readers=2) as store:
            assert store.get("s", b"k") == b"v"


def test_cached_view_reads_through_and_collects_changes(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "t", ["s"]) as store:
        store.write({"s": [(encode("old"), encode(1)), (encode("gone"), encode(2))]})
        view = CachedView(store, "s")
        assert view.get("old") == 1
        assert view.get("missing", "default") == "default"
        view.put("new", [1, 2])
        view.delete("gone")
        view.put(("t", 1), {"a": 1})
        assert view.get("gone") is None
        assert dict((repr(k), v) for k, v in view.items()) == {
            "'old'": 1,
            "'new'": [1, 2],
            "['t', 1]": {"a": 1},
        }
        changes = view.take_changes()
        assert changes.keys == ["new", "gone", ("t", 1)]
        assert changes.values == [[1, 2], None, {"a": 1}]
        assert view.dirty_count == 0
        view.give_back(changes)
        assert view.dirty_count == 3
        store.write({"s": view.take_changes().encoded})
        assert store.get("s", encode("gone")) is None
        assert msgpack.unpackb(store.get("s", encode(["t", 1])) or b"") == {"a": 1}


def test_unserialisable_value_names_store_and_key(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "t", ["s"]) as store:
        view = CachedView(store, "s")
        view.put("k", object())
        with pytest.raises(NotSerializable, match="key 'k' in store 's'"):
            view.take_changes()
        assert view.dirty_count == 1
        with pytest.raises(NotSerializable):
            view.put({1, 2}, 1)


def test_view_reads_lmdb_again_for_keys_it_evicted(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "t", ["s"]) as store:
        view = CachedView(store, "s", max_cached=2)
        assert view.get("never") is None  # an empty store: no LMDB read needed
        for k in range(5):
            view.put(k, k * 10)
        store.write({"s": view.take_changes().encoded})
        view.evict()
        assert [view.get(k) for k in range(5)] == [0, 10, 20, 30, 40]
        assert view.get("never") is None


def test_view_get_sees_values_an_operator_has_not_handed_over(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "t", ["s"]) as store:
        view = CachedView(store, "s")
        held = {"a": 1}

        def hand_over() -> None:
            for key, value in held.items():
                view.put(key, value)

        view.before_take(hand_over)
        assert view.get_own("a") is None  # get_own does not ask the operator
        assert view.get("a") == 1
        held["a"] = 2
        assert view.take_changes().values == [2]
