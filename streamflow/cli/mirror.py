"""Define ``streamflow mirror``: copy topics between two log targets.

``streamflow mirror SRC DST --topics a,b [--from-beginning] [--follow]``
copies topics between any two targets (a log directory, ``tcp://HOST:PORT``
of a broker, ``kafka://HOST:PORT[,...]`` of a Kafka cluster), in either
direction, with ``streamflow.log.mirror.mirror``: each partition into the
partition of the same number, keeping keys, values, timestamps and headers,
creating missing destination topics with the source's settings.
"""

from __future__ import annotations

import signal

import click
import trio

from .app import CommandError, main


def parse_topics(text: str) -> list[str]:
    """Split a comma-separated topic list, dropping blanks and repeats.

    >>> parse_topics("a, b,,a")
    ['a', 'b']
    """
    return list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


@main.command("mirror")
@click.argument("src")
@click.argument("dst")
@click.option("--topics", "topic_list", required=True, help="Comma-separated topics to copy.")
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Copy each partition from its first kept record (default: only new records).",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep copying new records until interrupted (default: stop once caught up).",
)
def mirror_command(src: str, dst: str, topic_list: str, from_beginning: bool, follow: bool) -> None:
    """Copy TOPICS from SRC to DST (each a log directory, tcp://HOST:PORT or kafka://HOST:PORT).

    Prints the records copied per topic. Without --from-beginning and --follow
    there is nothing to copy: start at the end and stop once caught up.
    """
    topics = parse_topics(topic_list)
    if not topics:
        raise CommandError("--topics names no topic; give e.g. --topics payments,refunds")
    if src == dst:
        raise CommandError("SRC and DST are the same target; name two different ones")
    if not from_beginning and not follow:
        click.echo(
            "note: without --from-beginning or --follow nothing is copied; add --from-beginning "
            "to copy what is stored",
            err=True,
        )
    copied = trio.run(_mirror, src, dst, topics, from_beginning, follow)
    for topic in topics:
        click.echo(f"{topic}: {copied.get(topic, 0)} records copied")


async def _mirror(
    src: str, dst: str, topics: list[str], from_beginning: bool, follow: bool
) -> dict[str, int]:
    from streamflow.log.client import connect
    from streamflow.log.mirror import mirror

    copied: dict[str, int] = {}
    async with connect(src) as source, connect(dst) as destination:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                async def copy() -> None:
                    copied.update(
                        await mirror(
                            source,
                            destination,
                            topics,
                            from_beginning=from_beginning,
                            until_idle=not follow,
                        )
                    )
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                nursery.start_soon(copy)
    return copied
