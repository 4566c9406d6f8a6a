from __future__ import annotations

from pathlib import Path

import pytest

from streamflow.errors import PipelineError
from streamflow.pipeline import Items, Pipeline, load_job, plan


def test_calls_chain_and_only_build_nodes() -> None:
    p = Pipeline("demo")
    s = p.source("payments", timestamp=lambda v: v["ts"]).map(lambda v: v).filter(bool)
    s.key_by(lambda v: v["u"]).sink("out")
    assert [n.kind for n in p.nodes] == ["source", "map", "filter", "key_by", "sink"]
    assert all(n.site.filename == __file__ for n in p.nodes)
    assert p.nodes[4].sink is not None
    assert p.nodes[4].sink.topic == "out"
    assert p.nodes[0].source is not None
    assert p.nodes[0].source.topics == ("payments",)


def test_node_label_names_kind_and_user_line() -> None:
    p = Pipeline("demo")
    line = _line_of_next()
    p.source("a").map(str).sink("b")
    assert p.nodes[1].label == f"map at {__file__}:{line}"


def _line_of_next() -> int:
    import inspect

    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno + 1


def test_non_callable_argument_names_operator_and_line() -> None:
    p = Pipeline("demo")
    s = p.source("a")
    line = _line_of_next()
    with pytest.raises(PipelineError, match=rf"map at .*test_builder.py:{line + 1}: fn=3 is not"):
        s.map(3)  # type: ignore[arg-type]


def test_two_stateful_operators_with_one_name_fail_at_build() -> None:
    p = Pipeline("demo")
    s = p.source("a").key_by(str)
    s.count("n").sink("x")
    with pytest.raises(PipelineError, match=r"'n' is already used by aggregate 'n' at"):
        s.reduce("n", lambda a, b: a + b)


def test_bad_names_and_arguments_are_rejected() -> None:
    with pytest.raises(PipelineError, match="Pipeline"):
        Pipeline("has space")
    with pytest.raises(PipelineError, match="parallelism"):
        Pipeline("p", parallelism=0)
    with pytest.raises(PipelineError, match="on_error"):
        Pipeline("p", on_error="ignore")  # type: ignore[arg-type]
    p = Pipeline("p")
    with pytest.raises(PipelineError, match="invalid topic name"):
        p.source("a/b")
    with pytest.raises(PipelineError, match="start="):
        p.source("a", start="middle")  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="timestamp="):
        p.source("a", timestamp=5)  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="grace_ms"):
        p.source("a").window(object(), grace_ms=-1)  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="cannot write to int"):
        p.source("a").sink(5)  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="name"):
        p.source("a").count("bad name")


def test_source_kinds() -> None:
    p = Pipeline("p")
    assert p.source(["a", "b"]).pipeline is p
    p.source([1, 2, 3])
    p.source(Items(["x", "y"]))
    p.source(Path("in.jsonl"))
    kinds = [n.source.kind for n in p.nodes if n.source is not None]
    assert kinds == ["topic", "items", "items", "file"]
    assert p.nodes[0].source is not None
    assert p.nodes[0].source.topics == ("a", "b")


def test_merge_rejects_foreign_and_self_streams() -> None:
    p, q = Pipeline("p"), Pipeline("q")
    a = p.source("a")
    with pytest.raises(PipelineError, match="cannot merge a stream of pipeline 'q'"):
        a.merge(q.source("b"))
    with pytest.raises(PipelineError, match="merged with itself"):
        a.merge(a)
    with pytest.raises(PipelineError, match="at least one"):
        a.merge()


def test_sink_less_pipeline_fails_when_planned() -> None:
    p = Pipeline("p")
    p.source("a").map(str)
    with pytest.raises(PipelineError, match="has no sink"):
        plan(p)


def test_dangling_branch_names_its_last_operator() -> None:
    p = Pipeline("p")
    s = p.source("a")
    s.sink("out")
    s.filter(bool)
    with pytest.raises(PipelineError, match=r"filter at .*: this stream goes nowhere"):
        plan(p)


def test_load_job_returns_module_pipeline(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(
        "from streamflow import Pipeline\n"
        "pipeline = Pipeline('j')\n"
        "pipeline.source('a').map(str).sink('b')\n"
    )
    loaded = load_job(job)
    assert loaded.name == "j"
    assert loaded.nodes[1].site.filename == str(job)
    assert loaded.nodes[1].site.lineno == 3


def test_load_job_without_pipeline_says_what_to_do(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("x = 1\n")
    with pytest.raises(PipelineError, match="no module-level `pipeline`"):
        load_job(job)
    with pytest.raises(PipelineError, match="does not exist"):
        load_job(tmp_path / "missing.py")
