"""Open a Kafka cluster as a log target: ``open_kafka_transport`` for ``kafka://`` URLs.

This module imports ``confluent_kafka`` only when a transport is opened, so
that a missing optional extra gives an error that says how to install it
rather than an ``ImportError`` at import time. ``KafkaTransport`` itself lives
in ``kafka_transport`` (and is importable from here).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from ..errors import InvalidConfig
from .kafka_codec import parse_kafka_url

if TYPE_CHECKING:
    from .kafka_transport import KafkaTransport

__all__ = ["KafkaTransport", "open_kafka_transport", "parse_kafka_url", "require_kafka"]

INSTALL_HINT: Final = "pip install 'streamflow-trio[kafka]'"


def require_kafka() -> None:
    """Raise ``InvalidConfig`` naming the extra to install when confluent-kafka is missing."""
    try:
        importlib.import_module("confluent_kafka")
    except ImportError as exc:
        raise InvalidConfig(
            "target",
            "kafka://...",
            f"the Kafka extra installed (confluent_kafka is missing): run {INSTALL_HINT}",
        ) from exc


def __getattr__(name: str) -> Any:
    if name == "KafkaTransport":
        require_kafka()
        from .kafka_transport import KafkaTransport

        return KafkaTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def open_kafka_transport(url: str, **config: Any) -> KafkaTransport:
    """Connect to the Kafka cluster of *url* and return its transport; ``aclose`` it after.

    Args:
        url: ``kafka://host1:9092,host2:9092``.
        **config: ``KafkaTransport`` options and librdkafka settings (SASL,
            TLS, timeouts), e.g. ``security_protocol="SASL_SSL"``.

    Raises:
        InvalidConfig: *url* is malformed, or confluent-kafka is not installed
            (the message says which extra to install).
        BrokerUnavailable: no broker of *url* answered.
    """
    bootstrap = parse_kafka_url(url)
    require_kafka()
    from .kafka_transport import KafkaTransport

    transport = KafkaTransport(bootstrap, **config)
    try:
        await transport.open()
    except BaseException:
        await transport.aclose()
        raise
    return transport
