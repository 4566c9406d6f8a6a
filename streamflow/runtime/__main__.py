"""Run one worker process of a job: ``python -m streamflow.runtime JOB.py TARGET``.

``streamflow run JOB.py --processes N`` starts N of these. Options:
``--until-idle``, ``--processing``, ``--state-dir``, ``--commit-interval-ms``,
``--session-timeout-ms``, ``--metrics-port``. Prints ``RUNNING <pid>`` once the job file loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from streamflow.errors import StreamflowError
from streamflow.pipeline import load_job

from .run import run


def main(argv: list[str] | None = None) -> int:
    """Parse *argv*, run the job and return the exit status. Blocking."""
    parser = argparse.ArgumentParser(prog="python -m streamflow.runtime")
    parser.add_argument("job")
    parser.add_argument("target")
    parser.add_argument("--until-idle", action="store_true")
    parser.add_argument("--processing", default="at_least_once")
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--commit-interval-ms", type=int, default=1000)
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    parser.add_argument("--metrics-port", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("STREAMFLOW_LOG_LEVEL", "WARNING"))
    try:
        pipeline = load_job(args.job)
        print(f"RUNNING {os.getpid()}", flush=True)
        run(
            pipeline,
            args.target,
            until_idle=args.until_idle,
            processing=args.processing,
            state_dir=args.state_dir,
            commit_interval_ms=args.commit_interval_ms,
            session_timeout_ms=args.session_timeout_ms,
            metrics_port=args.metrics_port,
        )
    except StreamflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
