"""Stream processing with its own durable log, on trio, msgpack and LMDB.

The public API: ``connect`` (the async client, embedded, over TCP or on Kafka),
``Pipeline``, ``windows`` and ``run`` (declarative jobs), ``Record`` and
``Message`` (what is read and appended), ``WindowResult`` and ``errors``.
"""

from __future__ import annotations

from . import errors
from .log.client import connect
from .log.record import Message, Record
from .operators import windows
from .operators.windows import WindowResult
from .pipeline import Pipeline
from .runtime import run

__all__ = [
    "Message",
    "Pipeline",
    "Record",
    "WindowResult",
    "connect",
    "errors",
    "run",
    "windows",
]
