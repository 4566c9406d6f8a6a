from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import streamflow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from streamflow.log import Transport


@pytest.fixture
async def transport(tmp_path: Path) -> AsyncIterator[Transport]:
    async with streamflow.connect(tmp_path / "data", cleaner=False) as client:
        yield client.transport
