from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
import trio
from click.testing import CliRunner, Result

import streamflow
from streamflow.cli import main
from streamflow.log import Log, Message, partition_for

if TYPE_CHECKING:
    from pathlib import Path


def cli(data: Path, *args: str, stdin: str | bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["--data", str(data), *args], input=stdin)


def ok(data: Path, *args: str, stdin: str | bytes | None = None) -> Result:
    result = cli(data, *args, stdin=stdin)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def one_line_error(result: Result, status: int) -> str:
    assert result.exit_code == status, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def records(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def json_lines(values: list[Any]) -> str:
    return "".join(json.dumps(v) + "\n" for v in values)


PAYMENTS = [{"user_id": f"u{i % 5}", "amount": i + 0.5} for i in range(40)]


def test_topics_create_list_describe_delete(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = ok(data, "topics", "create", "payments", "--partitions", "3", "--fsync", "never")
    assert created.stdout == "created topic payments (3 partitions)\n"
    ok(data, "topics", "create", "alerts", "--retention-ms", "60000", "--cleanup-policy", "compact")
    assert ok(data, "topics", "list").stdout == "alerts\npayments\n"

    table = ok(data, "topics", "describe", "payments").stdout
    assert table.startswith("topic payments: 3 partitions")
    assert "PARTITION  START_OFFSET    END_OFFSET    SIZE_BYTES" in table
    assert "fsync" in table
    assert "never" in table

    described = json.loads(ok(data, "topics", "describe", "alerts", "--json").stdout)
    assert described["name"] == "alerts"
    assert [p["partition"] for p in described["partitions"]] == [0]
    assert described["config"]["retention_ms"] == 60000
    assert described["config"]["cleanup_policy"] == "compact"

    assert ok(data, "topics", "delete", "alerts").stdout == "deleted topic alerts\n"
    assert ok(data, "topics", "list").stdout == "payments\n"


def test_data_option_may_follow_the_command(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    runner = CliRunner()
    result = runner.invoke(main, ["topics", "create", "t", "--data", str(data)])
    assert result.exit_code == 0, result.output
    listed = runner.invoke(main, ["topics", "list", "--data", str(data)])
    assert listed.stdout == "t\n"
    from_env = runner.invoke(main, ["topics", "list"], env={"STREAMFLOW_DATA": str(data)})
    assert from_env.stdout == "t\n"
    with Log.open(data) as log:
        assert log.topics() == ["t"]


def test_produce_then_consume_round_trips_keys_values_and_partitions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(data, "topics", "create", "payments", "--partitions", "3")
    produced = ok(data, "produce", "payments", "--key-field", "user_id", stdin=json_lines(PAYMENTS))
    assert produced.stderr == "produced 40 records to payments\n"

    out = records(ok(data, "consume", "payments", "--from-beginning", "--timeout", "0"))
    assert len(out) == len(PAYMENTS)
    for partition in range(3):
        got = [r for r in out if r["partition"] == partition]
        # Within a partition, records keep the order of stdin, at offsets 0, 1, 2, ...
        assert [r["offset"] for r in got] == list(range(len(got)))
        assert [r["value"] for r in got] == [
            p for p in PAYMENTS if partition_for(p["user_id"], 3) == partition
        ]
        assert all(r["key"] == r["value"]["user_id"] for r in got)
        assert all(isinstance(r["timestamp"], int) for r in got)
    with Log.open(data) as log:
        ends = [log.partition("payments", i).end_offset for i in range(3)]
    assert sum(ends) == 40


def test_unkeyed_produce_to_one_partition_and_consume_from_an_offset(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(data, "topics", "create", "events", "--partitions", "2")
    values: list[Any] = ["a", 1, None, [1, 2], {"nested": {"x": True}}]
    ok(data, "produce", "events", "--partition", "1", stdin=json_lines(values) + "\n\n")

    out = records(
        ok(data, "consume", "events", "--partition", "1", "--offset", "2", "--timeout", "0")
    )
    assert [(r["partition"], r["offset"], r["key"], r["value"]) for r in out] == [
        (1, 2, None, None),
        (1, 3, None, [1, 2]),
        (1, 4, None, {"nested": {"x": True}}),
    ]
    assert records(ok(data, "consume", "events", "--partition", "0", "--from-beginning")) == []


def test_consume_starts_at_the_end_and_stops_after_max(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(data, "topics", "create", "t")
    ok(data, "produce", "t", stdin=json_lines(list(range(10))))
    # Like kafka-console-consumer: without --from-beginning only new records are shown.
    assert ok(data, "consume", "t", "--timeout", "0.1").stdout == ""
    out = records(ok(data, "consume", "t", "--from-beginning", "--max", "4"))
    assert [r["value"] for r in out] == [0, 1, 2, 3]
    assert ok(data, "consume", "t", "--from-beginning", "--max", "0").stdout == ""


def test_consume_shows_bytes_and_odd_values_as_valid_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Log.open(data) as log:
        log.create_topic("raw")
        log.partition("raw", 0).append(
            [
                Message(key=b"user-1", value=b"\xff\x00binary"),
                Message(key=7, value={b"k": float("nan"), 3: "x"}, headers={"h": b"v"}),
            ]
        )
    out = records(ok(data, "consume", "raw", "--from-beginning", "--timeout", "0"))
    assert out[0]["key"] == {"$bytes": "user-1"}
    assert out[0]["value"] == {"$base64": "/wBiaW5hcnk="}
    assert "headers" not in out[0]
    assert out[1]["key"] == 7
    assert out[1]["value"] == {"k": "nan", "3": "x"}
    assert out[1]["headers"] == {"h": {"$bytes": "v"}}


def test_produce_bad_json_names_the_line_and_keeps_the_lines_before(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(data, "topics", "create", "t")
    error = one_line_error(cli(data, "produce", "t", stdin='{"a": 1}\n\n{"a": 2}\n{"a": \n5\n'), 1)
    assert error.startswith("error: stdin line 4: invalid JSON")
    assert "at column" in error
    assert error.endswith("; the 2 records before it were written")
    out = records(ok(data, "consume", "t", "--from-beginning", "--timeout", "0"))
    assert [r["value"] for r in out] == [{"a": 1}, {"a": 2}]


def test_produce_bad_first_line_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(data, "topics", "create", "t")
    error = one_line_error(cli(data, "produce", "t", stdin=b"\xff\n1\n"), 1)
    assert error.startswith("error: stdin line 1: invalid JSON")
    assert error.endswith("nothing was written")
    assert ok(data, "consume", "t", "--from-beginning", "--timeout", "0").stdout == ""


def test_produce_without_the_key_field_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(data, "topics", "create", "t")
    error = one_line_error(
        cli(data, "produce", "t", "--key-field", "id", stdin='{"id": 1}\n[1]\n'), 1
    )
    assert "stdin line 2" in error
    assert "'id'" in error


@pytest.mark.parametrize(
    "args",
    [
        ["topics", "describe", "nope"],
        ["topics", "delete", "nope"],
        ["produce", "nope"],
        ["consume", "nope", "--from-beginning"],
        ["consume", "t", "--partition", "5"],
        ["produce", "t", "--partition", "5"],
    ],
)
def test_unknown_topic_or_partition_is_a_one_line_error(tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "data"
    ok(data, "topics", "create", "t")
    error = one_line_error(cli(data, *args, stdin="1\n"), 1)
    assert "nope" in error or "partition 5" in error


def test_bad_topic_settings_are_one_line_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(data, "topics", "create", "t")
    assert "already exists" in one_line_error(cli(data, "topics", "create", "t"), 1)
    assert "invalid name" in one_line_error(cli(data, "topics", "create", "../x"), 1)
    bad_segment = cli(data, "topics", "create", "u", "--segment-bytes", "10")
    assert "segment_bytes" in one_line_error(bad_segment, 1)
    assert ok(data, "topics", "list").stdout == "t\n"


def test_offset_out_of_range_is_a_one_line_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(data, "topics", "create", "t")
    ok(data, "produce", "t", stdin="1\n2\n")
    error = one_line_error(cli(data, "consume", "t", "--offset", "3"), 1)
    assert "offset 3" in error


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["consume", "t", "--from-beginning", "--offset", "0"], "not both"),
        (["topics", "create", "t", "--partitions", "0"], "--partitions"),
        (["topics", "create", "t", "--fsync", "sometimes"], "--fsync"),
        (["consume"], "TOPIC"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    data = tmp_path / "data"
    ok(data, "topics", "create", "t")
    error = one_line_error(cli(data, *args), 2)
    assert fragment in error
    assert "--help" in error


def test_missing_log_directory_is_not_created_by_reading(tmp_path: Path) -> None:
    data = tmp_path / "missing"
    error = one_line_error(cli(data, "topics", "list"), 1)
    assert "no log directory" in error
    assert "topics create" in error
    assert not data.exists()


def run_streamflow(*args: str, stdin: str = "", cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )


def test_command_line_in_a_real_process(tmp_path: Path) -> None:
    # The default --data is ./data, relative to where the command runs.
    created = run_streamflow("topics", "create", "orders", "--partitions", "2", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "data").is_dir()
    lines = json_lines([{"id": i, "sku": f"s{i % 3}"} for i in range(6)])
    produced = run_streamflow("produce", "orders", "--key-field", "sku", stdin=lines, cwd=tmp_path)
    assert produced.returncode == 0, produced.stderr
    consumed = run_streamflow(
        "consume", "orders", "--from-beginning", "--timeout", "0", cwd=tmp_path
    )
    assert consumed.returncode == 0, consumed.stderr
    out = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert sorted(r["value"]["id"] for r in out) == list(range(6))
    assert all(r["partition"] == partition_for(r["key"], 2) for r in out)

    missing = run_streamflow("consume", "nope", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ")
    assert missing.stderr.count("\n") == 1
    usage = run_streamflow("consume", cwd=tmp_path)
    assert usage.returncode == 2
    assert usage.stderr.count("\n") == 1
    assert "streamflow consume --help" in usage.stderr


def test_a_log_held_by_another_process_is_a_one_line_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Log.open(data) as log:
        log.create_topic("t")
        held = run_streamflow("--data", str(data), "topics", "list", cwd=tmp_path)
    assert held.returncode == 1
    assert held.stderr.startswith("error: ")
    assert held.stderr.count("\n") == 1
    assert "another process" in held.stderr
    assert run_streamflow("--data", str(data), "topics", "list", cwd=tmp_path).stdout == "t\n"


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("topics", "produce", "consume", "broker", "run", "describe"):
        assert command in result.stdout


JOB = """
from streamflow import Pipeline

pipeline = Pipeline("double")
pipeline.source("numbers").map(lambda v: v * 2).sink("doubled")
"""


def test_describe_prints_the_stages_and_topics_of_a_job(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(JOB)
    text = CliRunner().invoke(main, ["describe", str(job)])
    assert text.exit_code == 0, text.output
    assert "pipeline double" in text.stdout
    assert "source numbers" in text.stdout
    assert "doubled" in text.stdout
    mermaid = CliRunner().invoke(main, ["describe", str(job), "--format", "mermaid"])
    assert mermaid.stdout.startswith("flowchart")

    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    error = one_line_error(CliRunner().invoke(main, ["describe", str(empty)]), 1)
    assert "pipeline" in error


def test_run_a_job_file_until_idle_then_consume_its_output(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(JOB)
    assert run_streamflow("topics", "create", "numbers", cwd=tmp_path).returncode == 0
    assert run_streamflow("produce", "numbers", stdin="1\n2\n3\n", cwd=tmp_path).returncode == 0
    ran = run_streamflow("run", "job.py", "--broker", "data", "--until-idle", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    consumed = run_streamflow(
        "consume", "doubled", "--from-beginning", "--timeout", "0", cwd=tmp_path
    )
    assert [json.loads(line)["value"] for line in consumed.stdout.splitlines()] == [2, 4, 6]


async def test_broker_serves_the_directory_until_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    command = [sys.executable, "-m", "streamflow.cli", "--data", str(data), "broker", "--port", "0"]
    with (tmp_path / "broker.log").open("wb") as log_file:
        broker = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=log_file)
    try:
        assert broker.stdout is not None
        first = b""
        with trio.fail_after(60):
            while not first.endswith(b"\n"):
                chunk = await broker.stdout.receive_some(1)
                assert chunk, "the broker exited before listening"
                first += chunk
        line = first.decode()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with trio.fail_after(60):
            async with streamflow.connect(f"tcp://127.0.0.1:{port}") as client:
                await client.create_topic("remote", partitions=2)
                async with client.producer() as producer:
                    topic, partition, offset = await producer.send("remote", {"n": 1}, key="k")
        assert (topic, partition, offset) == ("remote", partition_for("k", 2), 0)
    finally:
        broker.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            status = await broker.wait()
        if broker.stdout is not None:
            await broker.stdout.aclose()
    assert status == 0
    out = records(ok(data, "consume", "remote", "--from-beginning", "--timeout", "0"))
    assert [(r["key"], r["value"]) for r in out] == [("k", {"n": 1})]


def test_consume_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Log.open(data) as log:
        log.create_topic("t")
        for _ in range(40):  # 20 MB of output: more than any pipe buffers
            log.partition("t", 0).append_columns([None] * 100, ["x" * 5000] * 100)
    command = [sys.executable, "-m", "streamflow.cli", "--data", str(data)]
    reader = subprocess.Popen(
        [*command, "consume", "t", "--from-beginning", "--timeout", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None
    assert reader.stderr is not None
    first = reader.stdout.readline()
    reader.stdout.close()  # like `streamflow consume ... | head -n 1`
    error = reader.stderr.read()
    assert reader.wait(timeout=60) == 1
    reader.stderr.close()
    assert json.loads(first)["offset"] == 0
    assert error == b""
