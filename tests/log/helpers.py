"""Helpers for log tests: find, cut and damage the files of a partition."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def partition_dir(log_dir: Path, topic: str = "t", partition: int = 0) -> Path:
    return log_dir / "topics" / topic / str(partition)


def segment_files(
    log_dir: Path, topic: str = "t", partition: int = 0, suffix: str = ".log"
) -> list[Path]:
    return sorted(partition_dir(log_dir, topic, partition).glob(f"*{suffix}"))


def chop_tail(log_dir: Path, cut: int, topic: str = "t", partition: int = 0) -> int:
    """Cut *cut* bytes off the newest non-empty segment; return how many were cut."""
    for path in reversed(segment_files(log_dir, topic, partition)):
        size = path.stat().st_size
        if size:
            cut = min(cut, size)
            os.truncate(path, size - cut)
            return cut
    return 0


def flip_byte(path: Path, position: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0xFF]))


def batch_positions(path: Path) -> list[int]:
    """Return the byte position of every batch in a segment file."""
    data = path.read_bytes()
    positions = []
    position = 0
    while position + 4 <= len(data):
        positions.append(position)
        position += 4 + int.from_bytes(data[position : position + 4], "big")
    return positions
