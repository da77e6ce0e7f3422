"""A block measured from a thread while it runs: the base of the benchmark's samplers."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Self


class Periodic:
    """Context manager that calls :meth:`sample` every ``interval`` seconds from a thread while its block runs."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """One look at what is measured; called from the sampling thread."""
        raise NotImplementedError
