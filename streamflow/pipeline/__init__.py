"""Declarative pipelines: the builder (frozen descriptions) and the plan (stages, topics)."""
