"""Define ``streamflow broker``, ``run`` and ``describe``: serving a log and running jobs.

The heavy modules (the broker, the runtime) are imported when a command runs,
so that ``streamflow topics ...`` starts fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import click

from .app import data_option, main, resolve_data


@main.command()
@data_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=7070, show_default=True)
@click.option(
    "--token",
    envvar="STREAMFLOW_TOKEN",
    help="Shared secret clients must present (env: STREAMFLOW_TOKEN).",
)
def broker(data: Path | None, host: str, port: int, token: str | None) -> None:
    """Serve the log directory over TCP until SIGINT or SIGTERM."""
    from streamflow.log.broker import main_broker

    def ready(bound: int) -> None:
        click.echo(f"listening on {host}:{bound}")

    main_broker(resolve_data(data), host, port, token or None, ready=ready)


@main.command()
@click.argument("job", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--broker",
    "target",
    required=True,
    help="Log directory (embedded) or tcp://HOST:PORT of a broker.",
)
@click.option("--until-idle", is_flag=True, help="Return once all input is processed.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--processing",
    type=click.Choice(["at_least_once", "exactly_once"]),
    default="at_least_once",
    show_default=True,
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="State stores of a job on a broker (default ./streamflow-state/PIPELINE).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port; with "
    "--processes N, worker i uses PORT+i).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level of every logger (default: progress and restores at INFO, the rest WARNING).",
)
def run(
    job: Path,
    target: str,
    until_idle: bool,
    processes: int,
    processing: str,
    state_dir: Path | None,
    metrics_port: int | None,
    log_level: str | None,
) -> None:
    """Run the pipeline defined in JOB (a Python file with a module-level ``pipeline``).

    On a terminal, a --until-idle run shows a progress bar per stage (and one per
    state store being restored); otherwise it logs a progress line every few
    seconds.
    """
    from streamflow.runtime import run_job_file

    configure_logging(log_level)
    options: dict[str, Any] = {"processing": processing}
    if state_dir is not None:
        options["state_dir"] = state_dir
    if metrics_port is not None:
        options["metrics_port"] = metrics_port
    if until_idle:
        options["progress"] = True
    run_job_file(job, target, until_idle=until_idle, processes=processes, **options)


@main.command("describe")
@click.argument("job", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "mermaid", "dot"]),
    default="text",
    show_default=True,
)
def describe_job(job: Path, fmt: Literal["text", "mermaid", "dot"]) -> None:
    """Print the stages, topics and state stores of the pipeline in JOB."""
    from streamflow.pipeline import describe, load_job

    click.echo(describe(load_job(job), format=fmt))


#: Loggers whose INFO lines a user of ``streamflow run`` wants to see: progress, restores.
PROGRESS_LOGGERS = ("streamflow.runtime", "streamflow.state.restore")


def configure_logging(level: str | None) -> None:
    """Send log lines to stderr: *level* for all, else progress at INFO and the rest WARNING."""
    logging.basicConfig(
        level=(level or "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if level is None:
        for name in PROGRESS_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
