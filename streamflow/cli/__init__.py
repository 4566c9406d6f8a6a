"""Run the ``streamflow`` command line.

Every log command works on an embedded log directory (``--data DIR``, default
``./data``, or ``STREAMFLOW_DATA``), given before or after the command name::

    streamflow topics create payments --partitions 4
    streamflow topics list | describe NAME | delete NAME
    echo '{"user_id": "u1", "amount": 9.5}' | streamflow produce payments --key-field user_id
    streamflow consume payments --from-beginning --max 10

``produce`` reads one JSON value per line from stdin. ``consume`` prints one
JSON object per record (``partition``, ``offset``, ``timestamp``, ``key``,
``value``, and ``headers`` when present). Like ``kafka-console-consumer`` it
starts at the end of each partition unless ``--from-beginning`` or
``--offset N`` says otherwise, and it stops on its own: after ``--max`` records,
or once no new record has arrived for ``--timeout`` seconds (default 1). A log
directory is open in one process at a time, so an embedded consumer only sees
what is already there; tailing a live topic takes a broker.

``broker`` serves a log directory over TCP; ``run JOB.py --broker DIR_OR_URL``
runs the pipeline a job file defines (``--metrics-port N`` serves its metrics
to Prometheus); ``describe JOB.py`` prints its plan. ``status --broker TARGET``
prints a table of topics and consumer groups with their lag, and ``top
--broker TARGET`` keeps that view refreshing in the terminal.
``mirror SRC DST --topics a,b --from-beginning`` copies topics between two
targets (directories, brokers, ``kafka://`` clusters), in either direction.

Errors print one line, ``error: ...``, on stderr: exit status 2 for a usage
mistake, 1 for anything else (a streamflow error, bad input, an I/O failure).
"""

from __future__ import annotations

# Importing the command modules registers their commands on ``main``.
from . import jobs, mirror, records, status, topics  # noqa: F401
from .app import main

__all__ = ["main"]
