"""Small value types shared by the scoring core, the batch runner and the flows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUARANTINE_COLUMNS = ("ts", "device", "tag", "value", "reason")
"""A telemetry row kept aside, as it came (as strings), with why it was not scored."""

ModelKey = tuple[str, "str | None"]
"""``(device, None)`` for a per-device model, ``(device, tag)`` for a per-sensor one."""


def key_name(key: ModelKey) -> str:
    """The manifest's name for a model key: ``device`` or ``device/tag``."""
    device, tag = key
    return device if tag is None else f"{device}/{tag}"


def parse_key(name: str) -> ModelKey:
    """Inverse of :func:`key_name`."""
    device, _, tag = name.partition("/")
    return device, tag or None


@dataclass(frozen=True)
class Failure:
    """Why one device (or sensor) could not be scored; one never stops the others."""

    device: str | None
    reason: str
    file: str = ""
    tag: str | None = None
    status: str = "failed"
    """``failed``, or ``silent`` for a model without a single reading: worth an alert of its own kind."""

    def __str__(self) -> str:
        where = f" ({self.file})" if self.file else ""
        sensor = f" tag {self.tag}" if self.tag else ""
        who = f"device {self.device!r}{sensor}" if self.device is not None else "file"
        return f"{who}{where}: {self.reason}"


@dataclass(frozen=True)
class Features:
    """One model's input for one hour: timestamps and the matrix in the model's feature order.

    ``ts`` holds only the grid's timestamps that have every feature; ``expected``
    is how many the window should hold, so ``coverage`` says how much was scored.
    ``filled`` cells came from a previous reading; ``duplicates`` and
    ``superseded`` count the device's readings dropped by :mod:`scoring.align`.
    """

    key: ModelKey
    ts: np.ndarray
    X: np.ndarray
    expected: int = 0
    filled: int = 0
    duplicates: int = 0
    superseded: int = 0

    @property
    def coverage(self) -> float:
        return len(self.ts) / self.expected if self.expected else 1.0
