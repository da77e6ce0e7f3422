"""Peak resident memory of the benchmark process and of the worker processes it starts.

Sampled from a thread, since workers are other processes and ``ru_maxrss``
only knows the whole life of one process, not one measured phase.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

import psutil

MB = 1024 * 1024


class PeakMemory:
    """Context manager: the driver's peak RSS and the largest peak of one new child process.

    Processes already running on entry (a Prefect test server, a JVM started for
    set-up) are not workers of the measured phase and are left out, unless listed
    in ``include``.
    """

    def __init__(self, interval: float = 0.05, include: tuple[int, ...] = ()) -> None:
        self.interval = interval
        self.include = set(include)
        self.driver_mb = 0.0
        self.worker_mb = 0.0
        self.workers_total_mb = 0.0
        self._me = psutil.Process(os.getpid())
        self._skip: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._skip = {p.pid for p in self._me.children(recursive=True)} - self.include
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        self.driver_mb = max(self.driver_mb, self._me.memory_info().rss / MB)
        sizes = []
        for child in self._me.children(recursive=True):
            if child.pid in self._skip:
                continue
            try:
                sizes.append(child.memory_info().rss / MB)
            except psutil.Error:  # exited between listing and reading
                continue
        if sizes:
            self.worker_mb = max(self.worker_mb, max(sizes))
            self.workers_total_mb = max(self.workers_total_mb, sum(sizes))
