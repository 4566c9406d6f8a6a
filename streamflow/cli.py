"""Run the ``streamflow`` command line."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="streamflow-trio")
def main() -> None:
    """Streamflow: durable topics, pipelines and state in one package."""
