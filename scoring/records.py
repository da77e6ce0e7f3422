"""Small value types shared by the scoring core, the batch runner and the flows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

    device: str
    reason: str
    file: str = ""
    tag: str | None = None

    def __str__(self) -> str:
        where = f" ({self.file})" if self.file else ""
        sensor = f" tag {self.tag}" if self.tag else ""
        return f"device {self.device!r}{sensor}{where}: {self.reason}"


@dataclass(frozen=True)
class Features:
    """One model's input for one hour: timestamps and the matrix in the model's feature order."""

    key: ModelKey
    ts: np.ndarray
    X: np.ndarray
