"""Declarative pipelines: the builder (frozen descriptions) and the plan (stages, topics)."""

from __future__ import annotations

from .builder import CallSite, Items, Node, Pipeline, SinkSpec, SourceSpec, Stream, Table
from .builder import WindowedStream as WindowedStream
from .describe import describe
from .job import load_job
from .plan import Layout, Plan, Stage, StageInput, plan, resolve

__all__ = [
    "CallSite",
    "Items",
    "Layout",
    "Node",
    "Pipeline",
    "Plan",
    "SinkSpec",
    "SourceSpec",
    "Stage",
    "StageInput",
    "Stream",
    "Table",
    "WindowedStream",
    "describe",
    "load_job",
    "plan",
    "resolve",
]
