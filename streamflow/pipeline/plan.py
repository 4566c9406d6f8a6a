"""Split a pipeline into stages joined by internal repartition topics.

A stage is a set of nodes that one task per input partition runs together,
without leaving the process. ``key_by`` ends a stage: its records are written,
keyed by the new key, to ``<pipeline>.<stage>.repartition`` and read back by the
stage of the nodes after it. Streams that are merged, and a join with its
table, share a stage (their inputs are read co-partitioned: task i reads
partition i of each). Stages are named ``s0``, ``s1``, ... in dependency order.
Planning does no I/O; partition counts come later from ``resolve``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from streamflow.errors import PipelineError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .builder import Node, Pipeline

InputKind = Literal["topic", "repartition", "items", "file"]


@dataclass(frozen=True, slots=True)
class StageInput:
    """One input of a stage and the nodes that take its records.

    For a source, ``node`` is the source node and ``targets`` is ``(node,)``;
    for a repartition topic, ``node`` is the upstream ``key_by`` node and
    ``targets`` are the nodes after it.
    """

    kind: InputKind
    topic: str | None
    node: int
    targets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Stage:
    """A group of nodes run by one task per input partition."""

    name: str
    nodes: tuple[int, ...]
    inputs: tuple[StageInput, ...]
    repartition_outputs: Mapping[int, str]
    stores: tuple[str, ...]
    upstream: tuple[str, ...]

    @property
    def topics(self) -> tuple[str, ...]:
        """Return the topics (source and repartition) this stage reads."""
        return tuple(i.topic for i in self.inputs if i.topic is not None)


@dataclass(frozen=True, slots=True)
class Plan:
    """The stages of a pipeline, in dependency order, and the topics between them."""

    pipeline: Pipeline
    stages: tuple[Stage, ...]
    children: Mapping[int, tuple[int, ...]]

    def node(self, node_id: int) -> Node:
        """Return the node with id *node_id*."""
        return self.pipeline.nodes[node_id]

    def stage(self, name: str) -> Stage:
        """Return the stage called *name*."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def source_topics(self) -> tuple[str, ...]:
        """Return the topics the pipeline reads from outside, in node order."""
        out: list[str] = []
        for node in self.pipeline.nodes:
            if node.source is not None:
                out.extend(t for t in node.source.topics if t not in out)
        return tuple(out)

    @property
    def sink_topics(self) -> tuple[str, ...]:
        """Return the topics the pipeline writes, in node order."""
        out: list[str] = []
        for node in self.pipeline.nodes:
            topic = node.sink.topic if node.sink is not None else None
            if topic is not None and topic not in out:
                out.append(topic)
        return tuple(out)

    @property
    def repartition_topics(self) -> tuple[str, ...]:
        """Return the internal topics between stages."""
        return tuple(t for s in self.stages for t in dict.fromkeys(s.repartition_outputs.values()))

    @property
    def stores(self) -> tuple[str, ...]:
        """Return every state store name."""
        return tuple(s for stage in self.stages for s in stage.stores)

    def changelog_topic(self, store: str) -> str:
        """Return the compacted topic that backs *store*."""
        return f"{self.pipeline.name}.{store}.changelog"


def plan(pipeline: Pipeline) -> Plan:
    """Split *pipeline* into stages.

    Raises:
        PipelineError: when the pipeline has no sink, a stream ends without a
            sink, or a merge feeds a stage its own repartitioned output.
    """
    nodes = pipeline.nodes
    if not any(n.kind == "sink" for n in nodes):
        where = f" (the first source is at {nodes[0].site})" if nodes else ""
        raise PipelineError(
            f"pipeline {pipeline.name!r} has no sink{where}; end a stream with .sink(topic)"
        )
    children: dict[int, list[int]] = {n.id: [] for n in nodes}
    for node in nodes:
        for parent in node.inputs:
            children[parent].append(node.id)
    for node in nodes:
        if not children[node.id] and node.kind not in ("sink", "to_table"):
            raise PipelineError(
                f"{node.label}: this stream goes nowhere; end it with .sink(...) "
                "or remove the operator"
            )

    parent_of = list(range(len(nodes)))

    def find(x: int) -> int:
        while parent_of[x] != x:
            parent_of[x] = parent_of[parent_of[x]]
            x = parent_of[x]
        return x

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent_of[max(ra, rb)] = min(ra, rb)

    for node in nodes:
        for parent in node.inputs:
            if nodes[parent].kind != "key_by":
                union(node.id, parent)
        for before in node.after:
            union(node.id, before)
        if node.kind == "key_by":
            kids = children[node.id]
            for kid in kids[1:]:
                union(kids[0], kid)

    groups: dict[int, list[int]] = {}
    for node in nodes:
        groups.setdefault(find(node.id), []).append(node.id)
    # Dependencies between groups: the group after a key_by needs the key_by's group.
    needs: dict[int, set[int]] = {root: set() for root in groups}
    for node in nodes:
        if node.kind == "key_by" and children[node.id]:
            downstream, upstream = find(children[node.id][0]), find(node.id)
            if downstream == upstream:
                raise PipelineError(
                    f"{node.label}: its output is merged back into the stream it came "
                    "from; merge before key_by, or key both streams"
                )
            needs[downstream].add(upstream)
    order: list[int] = []
    ready = sorted(root for root, deps in needs.items() if not deps)
    while ready:
        root = ready.pop(0)
        order.append(root)
        for other, deps in needs.items():
            if root in deps:
                deps.discard(root)
                if not deps:
                    ready.append(other)
                    ready.sort()
    names = {root: f"s{i}" for i, root in enumerate(order)}

    stages: list[Stage] = []
    for root in order:
        name = names[root]
        members = tuple(sorted(groups[root]))
        inputs: list[StageInput] = []
        feeders = [
            n
            for n in nodes
            if n.kind == "key_by" and children[n.id] and find(children[n.id][0]) == root
        ]
        for nid in members:
            source = nodes[nid].source
            if source is None:
                continue
            if source.kind == "topic":
                inputs.extend(StageInput("topic", t, nid, (nid,)) for t in source.topics)
            else:
                inputs.append(StageInput(source.kind, None, nid, (nid,)))  # type: ignore[arg-type]
        for j, feeder in enumerate(feeders):
            suffix = "" if len(feeders) == 1 else f".{j}"
            topic = f"{pipeline.name}.{name}.repartition{suffix}"
            inputs.append(StageInput("repartition", topic, feeder.id, tuple(children[feeder.id])))
        stores = tuple(nodes[n].store for n in members if nodes[n].factory is not None)
        feeds_from = tuple(names[find(f.id)] for f in feeders)
        stages.append(
            Stage(
                name,
                members,
                tuple(inputs),
                {},
                tuple(s for s in stores if s is not None),
                tuple(dict.fromkeys(feeds_from)),
            )
        )
    # Tell each stage which repartition topics its key_by nodes write to.
    writes: dict[str, dict[int, str]] = {s.name: {} for s in stages}
    for stage in stages:
        for inp in stage.inputs:
            if inp.kind == "repartition" and inp.topic is not None:
                writes[names[find(inp.node)]][inp.node] = inp.topic
    stages = [
        Stage(s.name, s.nodes, s.inputs, writes[s.name], s.stores, s.upstream) for s in stages
    ]
    return Plan(pipeline, tuple(stages), {k: tuple(v) for k, v in children.items()})


@dataclass(frozen=True, slots=True)
class Layout:
    """Partition counts resolved against a target: tasks per stage, topic sizes."""

    parallelism: int
    tasks: Mapping[str, int]
    topic_partitions: Mapping[str, int]


def resolve(plan: Plan, partitions: Mapping[str, int]) -> Layout:
    """Resolve task and partition counts from the source topics' partition counts.

    Args:
        plan: The pipeline's plan.
        partitions: Partition count of every source topic (and of any sink
            topic that already exists).

    The job's parallelism is ``Pipeline.parallelism`` or else the largest
    source topic partition count (1 without topic sources). Repartition topics
    and missing sink topics get that many partitions. A stage runs one task per
    partition index of its largest input.

    >>> from streamflow.pipeline import Pipeline
    >>> p = Pipeline("demo")
    >>> p.source("a").key_by(len).sink("out")
    >>> resolve(plan(p), {"a": 3}).tasks
    {'s0': 3, 's1': 3}
    """
    parallelism = plan.pipeline.parallelism or max(
        (partitions[t] for t in plan.source_topics), default=1
    )
    counts: dict[str, int] = {}
    for topic in plan.source_topics:
        counts[topic] = partitions[topic]
    for topic in plan.repartition_topics:
        counts[topic] = parallelism
    for topic in plan.sink_topics:
        counts[topic] = partitions.get(topic, counts.get(topic, parallelism))
    tasks: dict[str, int] = {}
    for stage in plan.stages:
        sizes = [counts[i.topic] if i.topic is not None else 1 for i in stage.inputs]
        tasks[stage.name] = max(sizes, default=1)
    return Layout(parallelism, tasks, counts)
