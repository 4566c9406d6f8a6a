"""Run one stage's operators for one task over whole batches: the sync core of the runtime.

A ``TaskEngine`` compiles a stage into units (a fused chain of stateless
steps, a stateful operator, a merge or a sink) and pushes each input batch
through them. Outputs are collected in an ``Outbox``, one list per destination
topic partition (or local sink), and written by the async worker after the
batch: nothing here does I/O, so a failed batch is rolled back by truncating
the outbox.

Error policy: a failing user function stops the task with ``OperatorError``
(operator, topic, partition, offset). With ``on_error="dead_letter"`` the
batch is retried record by record and each failing record goes to
``<pipeline>.dead-letter`` with the error in its headers. A stage with state
runs record by record from the start under ``dead_letter``, so that no state
change is applied twice; under ``stop`` its error names the first offset of
the failing batch.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from streamflow.errors import OperatorError
from streamflow.log.partitioner import partition_for
from streamflow.operators.stateless import Chain, Step, StepFailed
from streamflow.operators.windows import WindowResult

if TYPE_CHECKING:
    from streamflow.log import Headers
    from streamflow.operators import Item, Operator, StateView
    from streamflow.pipeline import Layout, Node, Plan, SinkSpec, Stage

logger = logging.getLogger("streamflow.runtime")

#: Sinks that are not topics are keyed by their node id in the outbox.
Destination = tuple[str, int] | int
Emit = Callable[[list["Item"]], None]
MAX_ERROR_CHARS: Final = 2000


class Outbox:
    """Outputs of the current batch, per destination; one task at a time."""

    def __init__(self) -> None:
        self.items: dict[Destination, list[Item]] = {}
        self.headers: dict[Destination, list[Headers | None]] = {}

    def add(self, dest: Destination, items: list[Item], headers: Headers | None = None) -> None:
        """Queue *items* for *dest*; *headers* (if any) apply to each of them."""
        queued = self.items.get(dest)
        if queued is None:
            queued = self.items[dest] = []
        if headers is not None and dest not in self.headers:
            self.headers[dest] = [None] * len(queued)
        queued.extend(items)
        hs = self.headers.get(dest)
        if hs is not None:
            hs.extend([headers] * len(items))

    def mark(self) -> dict[Destination, int]:
        """Return the current length of every destination (see ``rollback``)."""
        return {dest: len(items) for dest, items in self.items.items()}

    def rollback(self, mark: dict[Destination, int]) -> None:
        """Drop everything queued since *mark* was taken."""
        for dest in list(self.items):
            keep = mark.get(dest, 0)
            del self.items[dest][keep:]
            if dest in self.headers:
                del self.headers[dest][keep:]

    def take(self) -> list[tuple[Destination, list[Item], list[Headers | None] | None]]:
        """Return and clear the non-empty destinations."""
        out = [(d, items, self.headers.get(d)) for d, items in self.items.items() if items]
        self.items = {}
        self.headers = {}
        return out

    def __len__(self) -> int:
        return sum(len(items) for items in self.items.values())


class Unit:
    """One step of a compiled stage: an operator (or none), writers, next units."""

    __slots__ = ("emits", "label", "next", "op", "stateful")

    def __init__(self, label: str, op: Operator | None, stateful: bool) -> None:
        self.label = label
        self.op = op
        self.stateful = stateful
        self.emits: list[Emit] = []
        self.next: list[Unit] = []


def plain(value: Any) -> Any:
    """Return *value* as msgpack can write it: dataclasses (``WindowResult``) become maps.

    >>> from streamflow.log import Message
    >>> plain(Message(1, "a"))["value"]
    'a'
    """
    names = _FIELD_NAMES.get(type(value))
    if names is None:
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            return value
        names = _FIELD_NAMES[type(value)] = tuple(f.name for f in dataclasses.fields(value))
    return {name: getattr(value, name) for name in names}


#: Field names per dataclass type seen by ``plain`` (one lookup per result, not a scan).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def route(
    dest_topic: str, partitions: int, fallback: int, outbox: Outbox
) -> Callable[[list[Item]], None]:
    """Return a writer that queues items by ``partition_for(key)`` (keyless: *fallback*)."""
    if partitions == 1:
        only = (dest_topic, 0)

        def write_one(items: list[Item]) -> None:
            outbox.add(only, items)

        return write_one

    sticky = (dest_topic, fallback % partitions)

    def write(items: list[Item]) -> None:
        buckets: dict[int, list[Item]] = {}
        for item in items:
            key = item[0]
            p = fallback if key is None else partition_for(key, partitions)
            bucket = buckets.get(p)
            if bucket is None:
                buckets[p] = [item]
            else:
                bucket.append(item)
        for p, bucket in buckets.items():
            outbox.add(sticky if p == fallback else (dest_topic, p), bucket)

    return write


def sink_writer(
    node: Node, spec: SinkSpec, partitions: int, task_partition: int, outbox: Outbox
) -> Emit:
    """Return the writer of a sink node (keys, plain values, then routing)."""
    if spec.topic is not None:
        target = route(spec.topic, partitions, task_partition % partitions, outbox)
    else:
        node_id = node.id

        def target(items: list[Item]) -> None:
            outbox.add(node_id, items)

    key_fn = spec.key
    if key_fn is None and not node.windowed:
        return target

    def write(items: list[Item]) -> None:
        if key_fn is not None:
            items = [(key_fn(v), v, t) for _, v, t in items]
        if node.windowed:
            items = [
                (k, v.to_dict() if type(v) is WindowResult else plain(v), t) for k, v, t in items
            ]
        target(items)

    return write


class TaskEngine:
    """Compiled operators of one stage for one task (one input partition index).

    Not thread-safe; one task drives it. ``process`` runs one input batch and
    ``finish`` the end of a bounded run; each fills ``outbox``.

    Event time: each stateful operator keeps its own watermark, the largest
    event time among the records that reached it, moved record by record
    inside its ``process`` (which closes windows and fires timers as it goes).
    The engine never calls ``on_watermark`` between batches: a watermark taken
    from records the operator did not see (filtered out, or another operator's
    outputs) would close windows at batch boundaries, so results would depend
    on how the input was batched and a replay after a crash could differ.
    """

    def __init__(
        self, plan: Plan, stage: Stage, layout: Layout, partition: int, late_topic: str
    ) -> None:
        self.plan = plan
        self.stage = stage
        self.partition = partition
        self.pipeline = plan.pipeline.name
        self.dead_letter = plan.pipeline.on_error == "dead_letter"
        self.dead_letter_topic = plan.pipeline.dead_letter_topic
        self.late_topic = late_topic
        self.outbox = Outbox()
        self.units: list[Unit] = []
        self.entries: list[list[Unit]] = []
        self._compile(layout)
        self.stateful = any(u.stateful for u in self.units)
        self._record_by_record = self.stateful and self.dead_letter
        self.dead_letters = 0
        self.late_records = 0

    # -- compiling -------------------------------------------------------------------------

    def _compile(self, layout: Layout) -> None:
        plan, stage = self.plan, self.stage
        members = set(stage.nodes)
        kids = {n: [c for c in plan.children[n] if c in members] for n in stage.nodes}
        waited_on = {b for n in stage.nodes for b in plan.node(n).after}
        by_start: dict[int, Unit] = {}
        last_of: dict[int, int] = {}
        consumed: set[int] = set()
        for node_id in stage.nodes:
            if node_id in consumed:
                continue
            node = plan.node(node_id)
            if node.kind == "source" or node.kind in (
                "map",
                "filter",
                "flat_map",
                "key_by",
                "peek",
            ):
                steps: list[Step] = []
                if node.kind == "source":
                    if node.fn is not None:
                        steps.append(Step("timestamp", node.fn, f"timestamp of {node.label}"))
                else:
                    steps.append(Step(node.kind, node.fn, node.label))  # type: ignore[arg-type]
                cur = node_id
                while plan.node(cur).kind != "key_by" and len(kids[cur]) == 1:
                    nxt = plan.node(kids[cur][0])
                    if nxt.kind not in ("map", "filter", "flat_map", "key_by", "peek"):
                        break
                    if nxt.inputs != (cur,) or cur in waited_on:
                        break
                    steps.append(Step(nxt.kind, nxt.fn, nxt.label))  # type: ignore[arg-type]
                    consumed.add(nxt.id)
                    cur = nxt.id
                op: Operator | None = Chain(steps) if steps else None
                unit = Unit(steps[0].name if steps else node.label, op, False)
                last_of[node_id] = cur
            elif node.factory is not None:
                label = node.label
                unit = Unit(label, node.factory(label), True)
                last_of[node_id] = node_id
            elif node.kind == "sink" and node.sink is not None:
                unit = Unit(node.label, None, False)
                count = layout.topic_partitions.get(node.sink.topic or "", 1)
                unit.emits.append(sink_writer(node, node.sink, count, self.partition, self.outbox))
                last_of[node_id] = node_id
            else:  # merge: items pass through
                unit = Unit(node.label, None, False)
                last_of[node_id] = node_id
            by_start[node_id] = unit
            self.units.append(unit)
        for start, unit in by_start.items():
            last = last_of[start]
            topic = stage.repartition_outputs.get(last)
            if topic is not None:
                count = layout.topic_partitions[topic]
                unit.emits.append(route(topic, count, self.partition % count, self.outbox))
            unit.next = [by_start[c] for c in kids[last]]
        self.entries = [[by_start[t] for t in inp.targets] for inp in stage.inputs]

    # -- running ---------------------------------------------------------------------------

    def open(self, state: Callable[[str], StateView] | None) -> None:
        """Bind every operator to this task (stateful ones load their state)."""
        ctx = _Context(self, state)
        for unit in self.units:
            if unit.op is not None:
                unit.op.open(ctx)

    def _push(self, unit: Unit, items: list[Item]) -> None:
        op = unit.op
        if op is not None:
            try:
                items = op.process(items)
            except StepFailed:
                raise
            except Exception as exc:
                raise StepFailed(unit.label, exc) from exc
            if not items:
                return
        self._forward(unit, items)

    def _forward(self, unit: Unit, items: list[Item]) -> None:
        for emit in unit.emits:
            try:
                emit(items)
            except Exception as exc:
                raise StepFailed(unit.label, exc) from exc
        for nxt in unit.next:
            self._push(nxt, items)

    def _run(self, entries: list[Unit], items: list[Item]) -> None:
        for unit in entries:
            self._push(unit, items)

    def process(
        self,
        input_index: int,
        topic: str,
        offsets: list[int],
        keys: list[Any],
        values: list[Any],
        timestamps: list[int],
    ) -> None:
        """Run one input batch through the stage; outputs go to ``outbox``.

        Raises:
            OperatorError: when a user function raises under ``on_error="stop"``.
        """
        if not offsets:
            return
        entries = self.entries[input_index]
        if not self._record_by_record:
            mark = self.outbox.mark()
            try:
                head = entries[0].op if len(entries) == 1 else None
                if isinstance(head, Chain):
                    out = head.process_columns(keys, values, timestamps)
                    if out:
                        self._forward(entries[0], out)
                else:
                    self._run(entries, list(zip(keys, values, timestamps, strict=True)))
                return
            except StepFailed as failed:
                self.outbox.rollback(mark)
                if not self.dead_letter:
                    if self.stateful:
                        raise OperatorError(
                            failed.step, topic, self.partition, offsets[0], failed.error
                        ) from failed.error
                    # Find the failing record: stateless steps can run again.
                    for i in range(len(offsets)):
                        try:
                            self._run(entries, [(keys[i], values[i], timestamps[i])])
                        except StepFailed as again:
                            raise OperatorError(
                                again.step, topic, self.partition, offsets[i], again.error
                            ) from again.error
                    raise OperatorError(
                        failed.step, topic, self.partition, offsets[0], failed.error
                    ) from failed.error
        for i in range(len(offsets)):
            mark = self.outbox.mark()
            item = (keys[i], values[i], timestamps[i])
            try:
                self._run(entries, [item])
            except StepFailed as failed:
                self.outbox.rollback(mark)
                if not self.dead_letter:
                    raise OperatorError(
                        failed.step, topic, self.partition, offsets[i], failed.error
                    ) from failed.error
                self._dead_letter(failed, topic, offsets[i], item)

    def _dead_letter(self, failed: StepFailed, topic: str, offset: int, item: Item) -> None:
        self.dead_letters += 1
        text = "".join(traceback.format_exception_only(failed.error)).strip()
        headers: Headers = {
            "error": text[:MAX_ERROR_CHARS],
            "operator": failed.step,
            "topic": topic,
            "partition": self.partition,
            "offset": offset,
        }
        logger.warning(
            "%s failed on %s[%d] at offset %d (%s); record sent to %s",
            failed.step,
            topic,
            self.partition,
            offset,
            text,
            self.dead_letter_topic,
        )
        self.outbox.add((self.dead_letter_topic, 0), [item], headers)

    def finish(self) -> None:
        """Flush every operator at the end of a bounded run, in stage order."""
        for unit in self.units:
            if unit.op is not None:
                try:
                    out = unit.op.finish()
                except Exception as exc:
                    raise OperatorError(unit.label, "(finish)", self.partition, -1, exc) from exc
                if out:
                    self._forward_or_fail(unit, out)

    def _forward_or_fail(self, unit: Unit, items: list[Item]) -> None:
        try:
            self._forward(unit, items)
        except StepFailed as failed:
            raise OperatorError(
                failed.step, "(watermark)", self.partition, -1, failed.error
            ) from failed.error

    def late(self, operator: str, item: Item) -> None:
        """Queue a record that came after its window closed for ``<pipeline>.late``."""
        self.late_records += 1
        self.outbox.add(
            (self.late_topic, 0), [(item[0], plain(item[1]), item[2])], {"operator": operator}
        )


class _Context:
    """The ``TaskContext`` a task gives its operators."""

    def __init__(self, engine: TaskEngine, state: Callable[[str], StateView] | None) -> None:
        self._engine = engine
        self._state = state

    @property
    def pipeline(self) -> str:
        return self._engine.pipeline

    @property
    def partition(self) -> int:
        return self._engine.partition

    def state(self, store: str) -> StateView:
        if self._state is None:
            raise LookupError(f"stage {self._engine.stage.name} has no state store {store!r}")
        return self._state(store)

    def late(self, operator: str, item: Item) -> None:
        self._engine.late(operator, item)
