"""What every stage of one run shares (``Job``), and the names tasks write under.

A ``Job`` is made once per ``run`` call and handed to every stage and task:
the transport, the plan and its layout, the processing mode and the knobs
the tasks read. ``producer_id`` names a task's idempotent writer on the
built-in log; ``Job.transactional`` says where Kafka transactions replace it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .handoff import Handoff
from .transactions import supports_transactions

if TYPE_CHECKING:
    from pathlib import Path

    import trio

    from streamflow.log import Transport
    from streamflow.pipeline import Layout, Plan, Stage

    from .metrics import JobMetrics

__all__ = ["Job", "Revoked", "producer_id"]


@dataclass
class Job:
    """What every stage of one run shares (one per ``run`` call)."""

    transport: Transport
    plan: Plan
    layout: Layout
    processing: str
    until_idle: bool
    state_dir: Path
    commit_interval_ms: int = 1000
    use_groups: bool = False
    session_timeout_ms: int = 10_000
    fetch_max_bytes: int = 4 << 20
    done: dict[str, trio.Event] = field(default_factory=dict)
    records_written: int = 0
    metrics: JobMetrics | None = None
    #: Pass repartition batches to the next stage in this process (``handoff.py``).
    handoff: bool = True
    handoffs: Handoff | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        # Only where this job is provably the topics' sole, non-transactional writer.
        if self.handoff and not self.use_groups and not supports_transactions(self.transport):
            self.handoffs = Handoff(self.transport, self.plan.repartition_topics)

    @property
    def exactly_once(self) -> bool:
        """Return True when outputs are appended idempotently."""
        return self.processing == "exactly_once"

    def transactional(self, stage: Stage) -> bool:
        """Return True when *stage*'s tasks write in the target's transactions (Kafka).

        Under exactly-once every stage does. Under at-least-once a stage that
        feeds a repartition topic does too: a restarted task appends again what
        its killed run appended after its last commit, and a transport that
        forgets sequence numbers with the process cannot drop the copies, so the
        next stage's state would count those records twice.
        """
        if not supports_transactions(self.transport):
            return False
        return self.exactly_once or bool(stage.repartition_outputs)


class Revoked(Exception):
    """The stage's group moved on; its tasks stop and the stage rejoins."""


def producer_id(*parts: str | int) -> int:
    """Return a stable 63-bit id for the writer named by *parts*.

    >>> producer_id("p", "s0", "in", 0, "out") == producer_id("p", "s0", "in", 0, "out")
    True
    """
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)
