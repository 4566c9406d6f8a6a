"""Durable operator state: LMDB stores, changelog topics, checkpoints and restore."""
