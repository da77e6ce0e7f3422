"""The fault suite: every case adds a row to one table, printed at the end of the run (`make faults`)."""

from __future__ import annotations

import pytest

COLUMNS = ("case", "injected", "outcome", "devices lost", "duplicate rows")
_rows: list[tuple[str, ...]] = []


@pytest.fixture(scope="session")
def fault_table() -> list[tuple[str, ...]]:
    """Append ``(case, injected, outcome, devices_lost, duplicate_rows)`` once a case has been checked."""
    return _rows


def pytest_terminal_summary(terminalreporter) -> None:
    if not _rows:
        return
    widths = [max(len(str(r[i])) for r in [COLUMNS, *_rows]) for i in range(len(COLUMNS))]
    line = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    terminalreporter.section("fault suite")
    for row in [COLUMNS, tuple("-" * w for w in widths), *_rows]:
        terminalreporter.write_line(line(row))
