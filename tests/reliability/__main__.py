"""Run the reliability tests: ``python -m tests.reliability [--soak] [pytest args]``.

``--soak`` runs the soak tier (``-m soak`` and the larger counts of every
test); without it, the CI tier. The figures go to
``$STREAMFLOW_RELIABILITY_REPORT`` (default: ``reliability-report.jsonl`` in the
current directory) and are printed at the end.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def main(argv: list[str]) -> int:
    """Run pytest on this package; return its exit code."""
    args = [str(Path(__file__).parent), "-q", "-p", "no:logging"]
    if "--soak" in argv:
        argv = [a for a in argv if a != "--soak"]
        os.environ["STREAMFLOW_SOAK"] = "1"
        args += ["-m", "soak or not soak", "--timeout", "7200"]
    os.environ.setdefault(
        "STREAMFLOW_RELIABILITY_REPORT", str(Path.cwd() / "reliability-report.jsonl")
    )
    return int(pytest.main(args + argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
