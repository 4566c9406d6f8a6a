"""Define the ``streamflow`` command group and the one-line way it reports errors.

The subcommands live in sibling modules (``topics``, ``records``, ``jobs``,
``status``) and register themselves on ``main`` when ``streamflow.cli`` is
imported.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import click

from streamflow.errors import StreamflowError

if TYPE_CHECKING:
    from streamflow.log import Log

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DATA: Final = "data"


class CommandError(click.ClickException):
    """A command failed; shown as one ``error: ...`` line, exit status 1."""

    def show(self, file: Any = None) -> None:
        """Print the one-line error to stderr."""
        click.echo(f"error: {self.format_message()}", err=True)


class StreamflowGroup(click.Group):
    """A click group that reports every failure as one line, without a traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; exit 2 on a usage error, 1 on any other error.

        Blocking.
        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            status = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            hint = ""
            if exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            _fail(f"{exc.format_message()}{hint}", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except (StreamflowError, OSError) as exc:
            # (click itself ends a command whose reader went away, `| head`, quietly)
            _fail(_describe_error(exc), 1)
        except click.Abort:
            # Ctrl-C: no traceback, the conventional status for SIGINT.
            sys.exit(130)
        sys.exit(status if isinstance(status, int) else 0)


def _fail(message: str, status: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


def data_option(func: F) -> F:
    """Add ``--data DIR`` to a command, so it may follow the command name too."""
    return click.option(
        "--data",
        "data",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Log directory (default: the group's --data, ./data).",
    )(func)


def resolve_data(data: Path | None) -> Path:
    """Return the log directory given to the command, else the group's ``--data``."""
    if data is not None:
        return data
    ctx = click.get_current_context()
    root = ctx.find_root()
    chosen = root.params.get("data")
    return Path(chosen) if chosen is not None else Path(DEFAULT_DATA)


@contextlib.contextmanager
def open_log(data: Path, *, create: bool = False) -> Iterator[Log]:
    """Open the embedded log in *data*; unless *create*, the directory must exist.

    Blocking.

    Raises:
        CommandError: if *data* does not exist and *create* is false.
        LogLocked: if another process holds the directory.
    """
    from streamflow.log import Log

    if not create and not data.is_dir():
        raise CommandError(
            f"no log directory at {str(data)!r}; pass --data DIR, or create a topic first "
            "with 'streamflow topics create NAME'"
        )
    with Log.open(data) as log:
        yield log


@click.group(cls=StreamflowGroup)
@click.version_option(package_name="streamflow-trio")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    envvar="STREAMFLOW_DATA",
    help="Log directory of the embedded log (env: STREAMFLOW_DATA).",
)
def main(data: Path) -> None:
    """Streamflow: durable topics, pipelines and state in one package."""
