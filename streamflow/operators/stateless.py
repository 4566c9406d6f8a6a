"""Run chains of stateless steps (map, filter, flat_map, key_by, peek) as one fused loop.

Consecutive stateless steps of a stage compile into a single list
comprehension, so each record costs one Python call per user function and no
intermediate list per step. The comprehension is generated source, for
example map ``f`` then filter ``p``::

    [(k0, v1, t0) for k0, v0, t0 in items for v1 in [f(v0)] if p(v1)]

(CPython turns ``for x in [expr]`` inside a comprehension into a plain
assignment.) When a user function raises, the chain runs again one step at a
time to name the step that failed, and raises ``StepFailed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from .base import Item, TaskContext

StepKind = Literal["timestamp", "map", "filter", "flat_map", "key_by", "peek"]
STEP_KINDS: Final = ("timestamp", "map", "filter", "flat_map", "key_by", "peek")


@dataclass(frozen=True, slots=True)
class Step:
    """One stateless step: what it does, the user function and a name for errors.

    ``timestamp`` replaces the event time with ``fn(value)``; ``key_by``
    replaces the key; ``map`` the value; ``filter`` keeps records whose value
    makes ``fn`` true; ``flat_map`` replaces the value with each value of
    ``fn(value)``; ``peek`` calls ``fn`` and keeps the record.
    """

    kind: StepKind
    fn: Callable[[Any], Any]
    name: str

    def __post_init__(self) -> None:
        if self.kind not in STEP_KINDS:
            raise ValueError(f"Step kind {self.kind!r}: use one of {', '.join(STEP_KINDS)}")
        if not callable(self.fn):
            raise TypeError(f"{self.name}: fn={self.fn!r} is not callable")


class StepFailed(Exception):
    """A user function of a chain raised; names the step and keeps the error."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"{step}: {type(error).__name__}: {error}")
        self.step = step
        self.error = error


Fused = Callable[[Iterable[tuple[Any, Any, int]]], list[tuple[Any, Any, int]]]


def compile_steps(steps: Sequence[Step]) -> Fused:
    """Compile *steps* into one function from an iterable of items to a list of items.

    >>> double = compile_steps([Step("map", lambda v: v * 2, "map"),
    ...                         Step("filter", lambda v: v > 2, "filter")])
    >>> double([(None, 1, 0), ("k", 2, 5)])
    [('k', 4, 5)]
    """
    namespace: dict[str, Any] = {}
    clauses = ["for k0, v0, t0 in items"]
    k = v = t = 0
    fresh = 0
    for i, step in enumerate(steps):
        fn = f"_f{i}"
        namespace[fn] = step.fn
        fresh += 1
        if step.kind == "timestamp":
            clauses.append(f"for t{fresh} in [{fn}(v{v})]")
            t = fresh
        elif step.kind == "map":
            clauses.append(f"for v{fresh} in [{fn}(v{v})]")
            v = fresh
        elif step.kind == "filter":
            clauses.append(f"if {fn}(v{v})")
        elif step.kind == "flat_map":
            clauses.append(f"for v{fresh} in {fn}(v{v})")
            v = fresh
        elif step.kind == "key_by":
            clauses.append(f"for k{fresh} in [{fn}(v{v})]")
            k = fresh
        else:  # peek: call for the side effect, keep the record
            clauses.append(f"if {fn}(v{v}) or True")
    source = f"def fused(items):\n    return [(k{k}, v{v}, t{t}) {' '.join(clauses)}]\n"
    exec(compile(source, "<streamflow fused chain>", "exec"), namespace)
    fused: Fused = namespace["fused"]
    return fused


class Chain:
    """A run of stateless steps, as one ``Operator``; no state, one task at a time."""

    store: str | None = None

    def __init__(self, steps: Sequence[Step], name: str | None = None) -> None:
        """Compile *steps*; *name* defaults to the first step's name.

        Raises:
            ValueError: if *steps* is empty.
        """
        if not steps:
            raise ValueError("Chain needs at least one step")
        self.steps = tuple(steps)
        self.name = name if name is not None else steps[0].name
        self._fused = compile_steps(self.steps)
        self._singles = [compile_steps([s]) for s in self.steps]

    def __repr__(self) -> str:
        return f"Chain({', '.join(s.name for s in self.steps)})"

    def open(self, ctx: TaskContext) -> None:
        """Do nothing: a chain has no state to load."""

    def process(self, items: list[Item]) -> list[Item]:
        """Run every step over *items*; raise ``StepFailed`` naming a failing step."""
        try:
            return self._fused(items)
        except Exception:
            return self._step_by_step(items)

    def process_columns(
        self, keys: list[Any], values: list[Any], timestamps: list[int]
    ) -> list[Item]:
        """Run the chain straight over parallel columns (no input item list is built)."""
        try:
            return self._fused(zip(keys, values, timestamps, strict=True))
        except Exception:
            return self._step_by_step(list(zip(keys, values, timestamps, strict=True)))

    def _step_by_step(self, items: list[Item]) -> list[Item]:
        for step, single in zip(self.steps, self._singles, strict=True):
            try:
                items = single(items)
            except Exception as exc:
                raise StepFailed(step.name, exc) from exc
        # The fused run failed but the separate steps did not: the functions are
        # not deterministic; the step-by-step result stands.
        return items

    def on_watermark(self, watermark: int) -> list[Item]:
        """Return nothing: a chain keeps no windows."""
        return []

    def finish(self) -> list[Item]:
        """Return nothing: a chain buffers no records."""
        return []
