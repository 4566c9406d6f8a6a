"""Stream processing with its own durable log, on trio, msgpack and LMDB.

The public API: ``connect`` (the async client, embedded or over TCP),
``Pipeline``, ``windows`` and ``run`` (declarative jobs), ``Record`` and
``Message`` (what is read and appended), ``WindowResult`` and ``errors``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve on first use, so that ``import streamflow.log`` stays light and
# a lower layer never imports a higher one through this package.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "connect": ("streamflow.log.client", "connect"),
    "Message": ("streamflow.log.record", "Message"),
    "Record": ("streamflow.log.record", "Record"),
    "Pipeline": ("streamflow.pipeline", "Pipeline"),
    "windows": ("streamflow.operators.windows", None),
    "WindowResult": ("streamflow.operators.windows", "WindowResult"),
    "run": ("streamflow.runtime", "run"),
    "errors": ("streamflow.errors", None),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'streamflow' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)
