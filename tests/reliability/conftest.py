"""Reliability fixtures: the seed (printed on failure), the figures report, the soak tier."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from . import harness

if TYPE_CHECKING:
    from collections.abc import Generator


def _soak_selected(config: pytest.Config) -> bool:
    return os.environ.get("STREAMFLOW_SOAK") == "1" or "soak" in (config.option.markexpr or "")


def pytest_configure(config: pytest.Config) -> None:
    if _soak_selected(config):
        os.environ["STREAMFLOW_SOAK"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _soak_selected(config):
        return
    skip = pytest.mark.skip(reason="soak tier: run with -m soak or STREAMFLOW_SOAK=1")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _report_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.getbasetemp() / "reliability.jsonl"
    harness.REPORT_PATH[:] = [path]


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The test's seed; printed with the failure report so the run can be replayed."""
    value = harness.seed()
    request.node.user_properties.append(("seed", value))
    return value


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if rep.failed:
        for name, value in item.user_properties:
            if name == "seed":
                rep.sections.append(
                    ("replay", f"STREAMFLOW_SEED={value} python -m pytest '{item.nodeid}'")
                )
    return rep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    path = harness.report_path()
    if path.exists():
        terminalreporter.write_sep("-", f"reliability figures ({path})")
        for line in path.read_text().splitlines():
            terminalreporter.write_line(line)
