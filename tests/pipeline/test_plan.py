from __future__ import annotations

import pytest

from streamflow.errors import PipelineError
from streamflow.pipeline import Pipeline, describe, plan, resolve


def test_one_stage_without_key_by() -> None:
    p = Pipeline("p")
    p.source("a").map(str).filter(bool).sink("out")
    stages = plan(p).stages
    assert [s.name for s in stages] == ["s0"]
    assert stages[0].topics == ("a",)
    assert stages[0].repartition_outputs == {}


def test_key_by_ends_a_stage_with_a_repartition_topic() -> None:
    p = Pipeline("fraud")
    p.source("a").key_by(str).map(str).sink("out")
    the_plan = plan(p)
    s0, s1 = the_plan.stages
    assert s0.repartition_outputs == {1: "fraud.s1.repartition"}
    assert s1.topics == ("fraud.s1.repartition",)
    assert s1.upstream == ("s0",)
    assert the_plan.repartition_topics == ("fraud.s1.repartition",)


def test_three_stages_in_dependency_order() -> None:
    p = Pipeline("p")
    p.source("a").key_by(str).count("n").key_by(str).map(str).sink("out")
    the_plan = plan(p)
    assert [s.name for s in the_plan.stages] == ["s0", "s1", "s2"]
    assert the_plan.stage("s1").stores == ("n",)
    assert the_plan.stage("s2").upstream == ("s1",)
    assert the_plan.repartition_topics == ("p.s1.repartition", "p.s2.repartition")


def test_merged_sources_share_a_stage() -> None:
    p = Pipeline("p")
    p.source("a").merge(p.source("b").map(str)).sink("out")
    (stage,) = plan(p).stages
    assert stage.topics == ("a", "b")


def test_fork_after_key_by_reads_one_repartition_topic() -> None:
    p = Pipeline("p")
    k = p.source("a").key_by(str)
    k.map(str).sink("x")
    k.filter(bool).sink("y")
    s0, s1 = plan(p).stages
    assert s1.topics == ("p.s1.repartition",)
    assert len(s1.inputs[0].targets) == 2


def test_merge_back_into_own_stage_is_rejected() -> None:
    p = Pipeline("p")
    a = p.source("a")
    a.key_by(str).merge(a).sink("out")
    with pytest.raises(PipelineError, match="merged back"):
        plan(p)


def test_resolve_uses_parallelism_or_largest_source() -> None:
    p = Pipeline("p")
    p.source(["a", "b"]).key_by(str).sink("out")
    layout = resolve(plan(p), {"a": 2, "b": 5})
    assert layout.parallelism == 5
    assert layout.topic_partitions["p.s1.repartition"] == 5
    assert layout.tasks == {"s0": 5, "s1": 5}
    q = Pipeline("q", parallelism=3)
    q.source("a").key_by(str).sink("out")
    layout = resolve(plan(q), {"a": 8, "out": 1})
    assert layout.topic_partitions == {"a": 8, "q.s1.repartition": 3, "out": 1}
    assert layout.tasks == {"s0": 8, "s1": 3}


def test_describe_text_lists_stages_topics_and_stores() -> None:
    p = Pipeline("fraud")
    p.source("payments").key_by(str).count("per_user").sink("alerts")
    text = describe(p, partitions={"payments": 4})
    assert "stage s0: 4 task(s), reads payments" in text
    assert "stage s1: 4 task(s), reads fraud.s1.repartition" in text
    assert "fraud.s1.repartition  internal repartition, 4 partition(s)" in text
    assert "alerts  sink, 4 partition(s)" in text
    assert "fraud.per_user.changelog" in text
    assert "per_user  (stage s1" in text
    assert "? task(s)" in describe(p)


def test_describe_mermaid_and_dot() -> None:
    p = Pipeline("p")
    p.source("a").key_by(str).sink("out")
    mermaid = describe(p, "mermaid")
    assert mermaid.startswith("flowchart LR")
    assert 'n1 -. "p.s1.repartition" .-> n2' in mermaid
    dot = describe(p, "dot")
    assert dot.startswith('digraph "p"')
    assert 'label="p.s1.repartition"' in dot
    with pytest.raises(ValueError, match="format"):
        describe(p, "svg")  # type: ignore[arg-type]
