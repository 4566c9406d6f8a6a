"""Build a pipeline's frozen description: ``Pipeline``, ``Stream`` and their nodes.

Calls chain and only record nodes (kind, user functions, store name and the
user's source line); nothing runs and no I/O happens until the pipeline is run.
Every misuse raises ``PipelineError`` naming the operator and the line of user
code that made it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from streamflow.errors import PipelineError

if TYPE_CHECKING:
    from streamflow.operators import Operator
    from streamflow.operators.windows import WindowSpec

_PACKAGE_DIR: Final = str(Path(__file__).resolve().parent)
_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,200}")

#: Kinds of node that apply a user function to every value, without state.
STATELESS_KINDS: Final = frozenset({"map", "filter", "flat_map", "key_by", "peek"})
#: Kinds of node that own a state store.
STATEFUL_KINDS: Final = frozenset({"aggregate", "window_aggregate", "process", "to_table", "join"})

Start = Literal["earliest", "latest"]


@dataclass(frozen=True, slots=True)
class CallSite:
    """Where user code created a node: a file and a line number."""

    filename: str
    lineno: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"


def caller_site() -> CallSite:
    """Return the first stack frame outside ``streamflow.pipeline``."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    return CallSite(frame.f_code.co_filename, frame.f_lineno)


@dataclass(frozen=True, slots=True)
class Items:
    """An in-memory source: values (or ``Message``s) read once per run.

    Use it for a list of strings, which ``Pipeline.source`` would otherwise
    take for topic names. Items are read in the runtime's thread in chunks, so
    an iterator must not block.
    """

    values: Iterable[Any]


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """What a source node reads: topics, in-memory items, or a JSON-lines file."""

    topics: tuple[str, ...] = ()
    items: Items | None = None
    path: Path | None = None
    timestamp: Callable[[Any], int] | None = None
    start: Start = "earliest"

    @property
    def kind(self) -> str:
        """Return ``"topic"``, ``"items"`` or ``"file"``."""
        if self.items is not None:
            return "items"
        return "file" if self.path is not None else "topic"


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """Where a sink node writes: a topic, a list, a callable or a JSON-lines file."""

    topic: str | None = None
    into: list[Any] | None = None
    call: Callable[[Any], object] | None = None
    path: Path | None = None
    key: Callable[[Any], Any] | None = None

    @property
    def kind(self) -> str:
        """Return ``"topic"``, ``"list"``, ``"callable"`` or ``"file"``."""
        if self.topic is not None:
            return "topic"
        if self.into is not None:
            return "list"
        return "callable" if self.call is not None else "file"

    def describe(self) -> str:
        """Return a short human-readable target, for errors and ``describe``."""
        if self.topic is not None:
            return f"topic {self.topic}"
        if self.into is not None:
            return "a list"
        if self.call is not None:
            return f"callable {getattr(self.call, '__qualname__', repr(self.call))}"
        return f"file {self.path}"


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """One step of the pipeline graph (frozen once made).

    ``inputs`` are the ids of the nodes feeding this one, ``after`` the ids it
    must run after without taking their records (a join runs after its table).
    ``factory`` builds the operator of a stateful node, once per task.
    """

    id: int
    kind: str
    inputs: tuple[int, ...]
    site: CallSite
    fn: Callable[..., Any] | None = None
    store: str | None = None
    source: SourceSpec | None = None
    sink: SinkSpec | None = None
    factory: Callable[[str], Operator] | None = None
    after: tuple[int, ...] = ()
    windowed: bool = False

    @property
    def label(self) -> str:
        """Name the node for errors and metrics: kind, store and source line."""
        store = f" {self.store!r}" if self.store else ""
        return f"{self.kind}{store} at {self.site}"


class Pipeline:
    """A named, declarative dataflow: sources, operators and sinks.

    Building is single-threaded and does no I/O. ``parallelism`` sets the
    partition count of internal repartition topics (default: the largest
    partition count among the source topics). ``on_error`` is ``"stop"`` (a
    failing user function stops the job with ``OperatorError``) or
    ``"dead_letter"`` (the record goes to ``<name>.dead-letter`` and
    processing goes on).
    """

    def __init__(
        self,
        name: str,
        *,
        parallelism: int | None = None,
        on_error: Literal["stop", "dead_letter"] = "stop",
    ) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in {".", ".."}:
            raise PipelineError(
                f"Pipeline({name!r}): the name must be 1 to 200 characters from "
                "A-Z a-z 0-9 . _ - (it prefixes the job's internal topics)"
            )
        if parallelism is not None and (
            not isinstance(parallelism, int) or isinstance(parallelism, bool) or parallelism < 1
        ):
            raise PipelineError(
                f"Pipeline({name!r}): parallelism={parallelism!r}; give a positive int or None"
            )
        if on_error not in ("stop", "dead_letter"):
            raise PipelineError(
                f"Pipeline({name!r}): on_error={on_error!r}; use 'stop' or 'dead_letter'"
            )
        self.name = name
        self.parallelism = parallelism
        self.on_error = on_error
        self._nodes: list[Node] = []
        self._stores: dict[str, Node] = {}

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, nodes={len(self._nodes)})"

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Return every node, in the order they were made (a topological order)."""
        return tuple(self._nodes)

    @property
    def dead_letter_topic(self) -> str:
        """Return the topic that receives failed records under ``on_error="dead_letter"``."""
        return f"{self.name}.dead-letter"

    @property
    def late_topic(self) -> str:
        """Return the topic that receives records later than their window's close."""
        return f"{self.name}.late"

    def source(
        self,
        topic_or_topics: str | Sequence[str] | Items | os.PathLike[str] | Iterable[Any],
        timestamp: Callable[[Any], int] | None = None,
        start: Start = "earliest",
    ) -> Stream:
        """Start a stream from topics, in-memory items, or a JSON-lines file.

        Args:
            topic_or_topics: A topic name or a list of topic names (several
                topics are read together, partition i of each by task i); a
                ``pathlib.Path`` to a file with one JSON value per line; an
                ``Items`` wrapper, or any other iterable of values or
                ``Message``s.
            timestamp: Function from a value to its event time in integer ms;
                without it the record's log timestamp is the event time.
            start: Where a consumer group with no committed offset begins,
                ``"earliest"`` or ``"latest"``.

        Raises:
            PipelineError: on a bad topic name, a non-callable *timestamp* or
                an unknown *start*.
        """
        site = caller_site()
        what = f"source at {site}"
        if timestamp is not None and not callable(timestamp):
            raise PipelineError(f"{what}: timestamp={timestamp!r} is not callable")
        if start not in ("earliest", "latest"):
            raise PipelineError(f"{what}: start={start!r}; use 'earliest' or 'latest'")
        spec: SourceSpec
        if isinstance(topic_or_topics, str):
            spec = SourceSpec(topics=(_check_topic(topic_or_topics, what),))
        elif isinstance(topic_or_topics, os.PathLike):
            spec = SourceSpec(path=Path(topic_or_topics))
        elif isinstance(topic_or_topics, Items):
            spec = SourceSpec(items=topic_or_topics)
        elif (
            isinstance(topic_or_topics, list | tuple)
            and topic_or_topics
            and all(isinstance(t, str) for t in topic_or_topics)
        ):
            topics = tuple(_check_topic(t, what) for t in topic_or_topics)
            if len(set(topics)) != len(topics):
                raise PipelineError(f"{what}: a topic is listed twice in {list(topics)}")
            spec = SourceSpec(topics=topics)
        elif isinstance(topic_or_topics, Iterable):
            spec = SourceSpec(items=Items(topic_or_topics))
        else:
            raise PipelineError(
                f"{what}: cannot read from {type(topic_or_topics).__name__}; give a topic "
                "name, a list of topic names, a pathlib.Path or an iterable of values"
            )
        spec = SourceSpec(spec.topics, spec.items, spec.path, timestamp, start)
        node = self._add("source", (), site, fn=timestamp, source=spec)
        return Stream(self, node.id, keyed=False)

    def _add(self, kind: str, inputs: tuple[int, ...], site: CallSite, **fields: Any) -> Node:
        node = Node(len(self._nodes), kind, inputs, site, **fields)
        if node.store is not None:
            previous = self._stores.get(node.store)
            if previous is not None:
                raise PipelineError(
                    f"{node.label}: the name {node.store!r} is already used by "
                    f"{previous.label}; give each stateful operator its own name"
                )
            self._stores[node.store] = node
        self._nodes.append(node)
        return node


def _check_topic(topic: str, what: str) -> str:
    if not _NAME_RE.fullmatch(topic) or topic in {".", ".."}:
        raise PipelineError(
            f"{what}: invalid topic name {topic!r}; use 1 to 200 characters from A-Z a-z 0-9 . _ -"
        )
    return topic


def _check_callable(fn: object, argument: str, what: str) -> None:
    if not callable(fn):
        raise PipelineError(f"{what}: {argument}={fn!r} is not callable; pass a function")


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in {".", ".."}:
        raise PipelineError(
            f"{what}: name {name!r} must be 1 to 200 characters from A-Z a-z 0-9 . _ - "
            "(it names the state store and its changelog topic)"
        )
    return name


@dataclass(frozen=True, slots=True)
class Stream:
    """A handle on one node's output; every method adds a node and returns a new handle.

    Functions passed to the methods receive the value only. After ``key_by``
    the stream is keyed, and the key travels with each record.
    """

    pipeline: Pipeline
    node: int
    keyed: bool = False

    def _then(
        self, kind: str, site: CallSite, *, keyed: bool | None = None, **fields: Any
    ) -> Stream:
        node = self.pipeline._add(kind, (self.node,), site, **fields)
        return Stream(self.pipeline, node.id, self.keyed if keyed is None else keyed)

    def _fn_step(self, kind: str, fn: Callable[..., Any], argument: str = "fn") -> Stream:
        site = caller_site()
        _check_callable(fn, argument, f"{kind} at {site}")
        return self._then(kind, site, fn=fn, keyed=True if kind == "key_by" else None)

    def map(self, fn: Callable[[Any], Any]) -> Stream:
        """Replace each value with ``fn(value)``; the key is kept."""
        return self._fn_step("map", fn)

    def filter(self, fn: Callable[[Any], bool]) -> Stream:
        """Keep the records whose value makes ``fn(value)`` true."""
        return self._fn_step("filter", fn)

    def flat_map(self, fn: Callable[[Any], Iterable[Any]]) -> Stream:
        """Replace each value with every value of the iterable ``fn(value)``."""
        return self._fn_step("flat_map", fn)

    def key_by(self, fn: Callable[[Any], Any]) -> Stream:
        """Key each record by ``fn(value)``; ends the stage (repartition topic)."""
        return self._fn_step("key_by", fn)

    def peek(self, fn: Callable[[Any], object]) -> Stream:
        """Call ``fn(value)`` for each record and pass the record on unchanged.

        When a batch fails and is retried record by record to find the failing
        record, ``fn`` may see the batch's earlier records twice.
        """
        return self._fn_step("peek", fn)

    def merge(self, *others: Stream) -> Stream:
        """Join this stream with *others* into one (no order across streams)."""
        site = caller_site()
        what = f"merge at {site}"
        if not others:
            raise PipelineError(f"{what}: give at least one other stream")
        for other in others:
            if not isinstance(other, Stream):
                raise PipelineError(f"{what}: {other!r} is not a Stream")
            if other.pipeline is not self.pipeline:
                raise PipelineError(
                    f"{what}: cannot merge a stream of pipeline {other.pipeline.name!r} "
                    f"into pipeline {self.pipeline.name!r}"
                )
        inputs = (self.node, *(o.node for o in others))
        if len(set(inputs)) != len(inputs):
            raise PipelineError(f"{what}: a stream is merged with itself")
        node = self.pipeline._add("merge", inputs, site)
        keyed = self.keyed and all(o.keyed for o in others)
        return Stream(self.pipeline, node.id, keyed)

    def sink(
        self,
        topic: str | list[Any] | Callable[[Any], object] | os.PathLike[str],
        key: Callable[[Any], Any] | None = None,
    ) -> None:
        """Write the stream out: to a topic, a list, a callable or a JSON-lines file.

        Args:
            topic: A topic name (created when missing); a list to append each
                value to; a callable called with each value; or a
                ``pathlib.Path`` that receives one JSON value per line.
            key: Function from a value to the record key written to a topic;
                without it the stream's key is written.

        Raises:
            PipelineError: on a bad topic name or a non-callable *key*.
        """
        site = caller_site()
        what = f"sink at {site}"
        if key is not None:
            _check_callable(key, "key", what)
        spec: SinkSpec
        if isinstance(topic, str):
            spec = SinkSpec(topic=_check_topic(topic, what), key=key)
        elif isinstance(topic, list):
            spec = SinkSpec(into=topic, key=key)
        elif isinstance(topic, os.PathLike):
            spec = SinkSpec(path=Path(topic), key=key)
        elif callable(topic):
            spec = SinkSpec(call=topic, key=key)
        else:
            raise PipelineError(
                f"{what}: cannot write to {type(topic).__name__}; give a topic name, a "
                "list, a callable or a pathlib.Path"
            )
        self._then("sink", site, sink=spec, windowed=self._windowed())

    def _windowed(self) -> bool:
        nodes = self.pipeline._nodes
        todo = [self.node]
        while todo:
            node = nodes[todo.pop()]
            if node.windowed:
                return True
            todo.extend(node.inputs)
        return False

    # -- stateful operators: specs now, operator instances at task start --

    def aggregate(
        self, name: str, initial: Callable[[], Any], fold: Callable[[Any, Any], Any]
    ) -> Stream:
        """Fold each key's values into state; emit the key's new value per input."""
        site = caller_site()
        what = f"aggregate at {site}"
        store = _check_name(name, what)
        _check_callable(initial, "initial", what)
        _check_callable(fold, "fold", what)

        def factory(label: str) -> Operator:
            from streamflow.operators.aggregate import Aggregate

            return Aggregate(label, store, initial, fold)

        return self._then("aggregate", site, store=store, factory=factory, fn=fold)

    def reduce(self, name: str, fn: Callable[[Any, Any], Any]) -> Stream:
        """Combine each key's values pairwise with ``fn(acc, value)``."""
        site = caller_site()
        _check_callable(fn, "fn", f"reduce at {site}")
        return self.aggregate(name, _none, _reducer(fn))

    def count(self, name: str) -> Stream:
        """Count each key's records; emit the key's new count (an ``int``) per input."""
        return self.aggregate(name, _zero, _increment)

    def window(self, window: WindowSpec, grace_ms: int = 0) -> WindowedStream:
        """Group each key's records into event-time windows, then aggregate them."""
        site = caller_site()
        if not isinstance(grace_ms, int) or isinstance(grace_ms, bool) or grace_ms < 0:
            raise PipelineError(f"window at {site}: grace_ms={grace_ms!r}; give an int >= 0")
        return WindowedStream(self, window, grace_ms)

    def process(
        self,
        name: str,
        fn: Callable[..., Any],
        on_timer: Callable[..., Any] | None = None,
    ) -> Stream:
        """Run ``fn(ctx, key, value)`` per record with the key's own state and timers.

        Args:
            name: The state store's name (its identity across code changes).
            fn: Called per record with a ``ProcessContext`` (``ctx.state``,
                ``ctx.emit``, ``ctx.register_timer``), the key and the value.
            on_timer: ``on_timer(ctx, tag)``, called for a key once the task's
                event time reaches a timer registered with
                ``ctx.register_timer(timestamp, tag)``; needed to register timers.

        Raises:
            PipelineError: on a bad name or a non-callable *fn* or *on_timer*.
        """
        site = caller_site()
        what = f"process at {site}"
        store = _check_name(name, what)
        _check_callable(fn, "fn", what)
        if on_timer is not None:
            _check_callable(on_timer, "on_timer", what)

        def factory(label: str) -> Operator:
            from streamflow.operators.process import Process

            return Process(label, store, fn, on_timer=on_timer)

        return self._then("process", site, store=store, factory=factory, fn=fn)

    def to_table(self, name: str) -> Table:
        """Keep the latest value per key as a table that streams can ``join``."""
        site = caller_site()
        store = _check_name(name, f"to_table at {site}")

        def factory(label: str) -> Operator:
            from streamflow.operators.joins import ToTable

            return ToTable(label, store)

        node = self.pipeline._add("to_table", (self.node,), site, store=store, factory=factory)
        return Table(self.pipeline, node.id, store)

    def join(self, table: Table, fn: Callable[[Any, Any], Any]) -> Stream:
        """Join each record with the table's value for its key: ``fn(value, row)``."""
        site = caller_site()
        what = f"join at {site}"
        if not isinstance(table, Table) or table.pipeline is not self.pipeline:
            raise PipelineError(f"{what}: {table!r} is not a table of this pipeline")
        _check_callable(fn, "fn", what)
        store = table.store

        def factory(label: str) -> Operator:
            from streamflow.operators.joins import TableJoin

            return TableJoin(label, store, fn)

        node = self.pipeline._add(
            "join", (self.node,), site, factory=factory, fn=fn, after=(table.node,)
        )
        return Stream(self.pipeline, node.id, self.keyed)


@dataclass(frozen=True, slots=True)
class Table:
    """A keyed table made by ``Stream.to_table``; use it in ``Stream.join``."""

    pipeline: Pipeline
    node: int
    store: str


@dataclass(frozen=True, slots=True)
class WindowedStream:
    """A stream grouped into windows; finish it with ``aggregate``, ``reduce`` or ``count``.

    Each window emits one ``WindowResult(key, start, end, value)`` when the
    task's watermark reaches ``end + grace_ms``.
    """

    stream: Stream
    window: WindowSpec
    grace_ms: int

    def aggregate(
        self, name: str, initial: Callable[[], Any], fold: Callable[[Any, Any], Any]
    ) -> Stream:
        """Fold each window's values per key into one ``WindowResult``."""
        site = caller_site()
        what = f"window aggregate at {site}"
        store = _check_name(name, what)
        _check_callable(initial, "initial", what)
        _check_callable(fold, "fold", what)
        window, grace_ms = self.window, self.grace_ms

        def factory(label: str) -> Operator:
            from streamflow.operators.windows import WindowedAggregate

            return WindowedAggregate(label, store, window, grace_ms, initial, fold)

        return self.stream._then(
            "window_aggregate", site, store=store, factory=factory, fn=fold, windowed=True
        )

    def reduce(self, name: str, fn: Callable[[Any, Any], Any]) -> Stream:
        """Combine each window's values per key with ``fn(acc, value)``."""
        site = caller_site()
        _check_callable(fn, "fn", f"window reduce at {site}")
        return self.aggregate(name, _none, _reducer(fn))

    def count(self, name: str) -> Stream:
        """Count each window's records per key."""
        return self.aggregate(name, _zero, _increment)


def _none() -> None:
    return None


def _zero() -> int:
    return 0


def _increment(acc: int, _value: Any) -> int:
    return acc + 1


def _reducer(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def fold(acc: Any, value: Any) -> Any:
        return value if acc is None else fn(acc, value)

    return fold
