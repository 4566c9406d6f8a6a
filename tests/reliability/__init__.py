"""Reliability harness and tests R0-R12 (see ../../docs/reliability.md)."""
