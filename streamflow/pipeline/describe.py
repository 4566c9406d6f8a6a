"""Render a pipeline's plan as text, a Mermaid flowchart or a Graphviz graph."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .plan import Layout, Plan, plan, resolve

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .builder import Node, Pipeline

Format = Literal["text", "mermaid", "dot"]


def describe(
    pipeline: Pipeline,
    format: Format = "text",
    partitions: Mapping[str, int] | None = None,
) -> str:
    """Return the stages, operators, topics and state stores of *pipeline*.

    Args:
        pipeline: The pipeline to describe (it is planned, not run).
        format: ``"text"`` (an indented tree), ``"mermaid"`` or ``"dot"``; the
            result has no trailing newline.
        partitions: Partition counts of the source topics, when known; without
            them, counts that depend on the log are shown as ``?``.

    Raises:
        PipelineError: if the pipeline cannot be planned.
        ValueError: on an unknown *format*.
    """
    the_plan = plan(pipeline)
    layout = None
    if partitions is not None and all(t in partitions for t in the_plan.source_topics):
        layout = resolve(the_plan, partitions)
    if format == "text":
        return _text(the_plan, layout)
    if format == "mermaid":
        return _mermaid(the_plan)
    if format == "dot":
        return _dot(the_plan)
    raise ValueError(f"describe(format={format!r}): use 'text', 'mermaid' or 'dot'")


def _site(node: Node) -> str:
    return f"{Path(node.site.filename).name}:{node.site.lineno}"


def _what(the_plan: Plan, node: Node) -> str:
    """Return a one-line summary of a node, without its source line."""
    if node.source is not None:
        src = node.source
        if src.kind == "topic":
            what = "source " + ", ".join(src.topics)
        elif src.kind == "file":
            what = f"source file {src.path}"
        else:
            what = "source items"
        return what + (" (event time from timestamp=)" if src.timestamp else "")
    if node.sink is not None:
        return f"sink -> {node.sink.describe()}"
    if node.store is not None:
        return f"{node.kind} {node.store!r}"
    return node.kind


def _count(layout: Layout | None, topic: str) -> str:
    if layout is None:
        return "?"
    return str(layout.topic_partitions.get(topic, "?"))


def _text(the_plan: Plan, layout: Layout | None) -> str:
    pipeline = the_plan.pipeline
    parallelism = pipeline.parallelism or (layout.parallelism if layout else "from sources")
    lines = [f"pipeline {pipeline.name} (parallelism {parallelism}, on_error={pipeline.on_error})"]
    for si, stage in enumerate(the_plan.stages):
        last_stage = si == len(the_plan.stages) - 1
        lead, cont = ("└─ ", "   ") if last_stage else ("├─ ", "│  ")
        tasks = layout.tasks[stage.name] if layout else "?"
        reads = ", ".join(
            i.topic if i.topic is not None else f"{i.kind} (1 partition)" for i in stage.inputs
        )
        lines.append(f"{lead}stage {stage.name}: {tasks} task(s), reads {reads}")
        for ni, node_id in enumerate(stage.nodes):
            node = the_plan.node(node_id)
            branch = "└─ " if ni == len(stage.nodes) - 1 else "├─ "
            extra = ""
            if node_id in stage.repartition_outputs:
                topic = stage.repartition_outputs[node_id]
                extra = f" -> {topic}"
            if node.kind == "merge":
                extra = " of " + ", ".join(f"#{i}" for i in node.inputs)
            lines.append(
                f"{cont}{branch}#{node.id} {_what(the_plan, node)}{extra}  ({_site(node)})"
            )
    lines.append("topics:")
    for topic in the_plan.source_topics:
        lines.append(f"  {topic}  source, {_count(layout, topic)} partition(s)")
    for topic in the_plan.repartition_topics:
        lines.append(f"  {topic}  internal repartition, {_count(layout, topic)} partition(s)")
    for topic in the_plan.sink_topics:
        lines.append(f"  {topic}  sink, {_count(layout, topic)} partition(s)")
    for store in the_plan.stores:
        lines.append(f"  {the_plan.changelog_topic(store)}  internal changelog (compacted)")
    lines.append(f"  {pipeline.dead_letter_topic}  dead letters (on_error='dead_letter')")
    if any(n.windowed for n in pipeline.nodes):
        lines.append(f"  {pipeline.late_topic}  late records")
    lines.append("state stores:" if the_plan.stores else "state stores: none")
    for stage in the_plan.stages:
        for store in stage.stores:
            lines.append(f"  {store}  (stage {stage.name}, one LMDB store per task)")
    return "\n".join(lines)


def _edges(the_plan: Plan) -> list[tuple[int, int, str | None]]:
    """Return ``(from, to, repartition topic or None)`` for every edge."""
    out: list[tuple[int, int, str | None]] = []
    for stage in the_plan.stages:
        for node_id in stage.nodes:
            node = the_plan.node(node_id)
            for parent in node.inputs:
                topic = None
                if the_plan.node(parent).kind == "key_by":
                    for s in the_plan.stages:
                        topic = s.repartition_outputs.get(parent, topic)
                out.append((parent, node_id, topic))
            for before in node.after:
                out.append((before, node_id, "table"))
    return out


def _quote(text: str) -> str:
    return text.replace('"', "'")


def _mermaid(the_plan: Plan) -> str:
    lines = ["flowchart LR"]
    for stage in the_plan.stages:
        lines.append(f"  subgraph {stage.name}")
        for node_id in stage.nodes:
            node = the_plan.node(node_id)
            label = _quote(f"{_what(the_plan, node)}<br/>{_site(node)}")
            lines.append(f'    n{node_id}["{label}"]')
        lines.append("  end")
    for src, dst, topic in _edges(the_plan):
        if topic is None:
            lines.append(f"  n{src} --> n{dst}")
        else:
            lines.append(f'  n{src} -. "{_quote(topic)}" .-> n{dst}')
    return "\n".join(lines)


def _dot(the_plan: Plan) -> str:
    lines = [f'digraph "{_quote(the_plan.pipeline.name)}" {{', "  rankdir=LR;"]
    for stage in the_plan.stages:
        lines.append(f'  subgraph "cluster_{stage.name}" {{')
        lines.append(f'    label="stage {stage.name}";')
        for node_id in stage.nodes:
            node = the_plan.node(node_id)
            label = _quote(f"{_what(the_plan, node)}\\n{_site(node)}")
            lines.append(f'    n{node_id} [shape=box, label="{label}"];')
        lines.append("  }")
    for src, dst, topic in _edges(the_plan):
        if topic is None:
            lines.append(f"  n{src} -> n{dst};")
        else:
            lines.append(f'  n{src} -> n{dst} [style=dashed, label="{_quote(topic)}"];')
    lines.append("}")
    return "\n".join(lines)
