"""Prefect's own time in one flow run, sampled from the flow process's main thread.

Prefect's share by difference (the flow less the same work on plain Dask) is two
noisy runs apart: -3 % to 34 % at 10,000 devices across runs of one version. This
looks at one run instead. Every few milliseconds a thread takes the main thread's
stack and finds its innermost frame in Prefect's package or in fleetscore's: time
whose innermost owner is Prefect is Prefect's (its engine and API calls, the hour's
concurrency slot, task runs, artifacts, events, log handlers); time whose owner is
fleetscore is fleetscore's, waiting on Dask included. The wait for Prefect's
heartbeat thread when the flow function returns is counted apart, and Prefect's
time is told by the fleetscore function that called it (``engine`` when none did:
the flow run's start and end).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import FrameType, TracebackType

import prefect

import cluster
import flows
import scoring
from benchmarks.periodic import Periodic

PREFECT = str(Path(prefect.__file__).resolve().parent) + os.sep
FLEETSCORE = tuple(str(Path(package.__file__).resolve().parent) + os.sep for package in (flows, scoring, cluster))
HEARTBEAT = "_send_heartbeats"
"""Prefect's context manager (``prefect.flow_engine``) that joins its heartbeat thread on exit."""


def owner(frame: FrameType | None) -> str:
    """``prefect``, ``heartbeat`` (Prefect waiting for its heartbeat thread), ``fleetscore`` or ``other``."""
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(PREFECT):
            return "heartbeat" if frame.f_code.co_name == HEARTBEAT else "prefect"
        if path.startswith(FLEETSCORE):
            return "fleetscore"
        frame = frame.f_back
    return "other"


def caller(frame: FrameType | None) -> str:
    """The innermost fleetscore function on the stack, ``flows.limits.one_run_per_hour``; ``engine`` if none."""
    while frame is not None:
        path = frame.f_code.co_filename
        for package in FLEETSCORE:
            if path.startswith(package):
                module = Path(path).with_suffix("").relative_to(Path(package).parent)
                return f"{'.'.join(module.parts)}.{frame.f_code.co_name}"
        frame = frame.f_back
    return "engine"


class PrefectTime(Periodic):
    """Context manager: seconds of the block spent by this thread in Prefect's code, and waiting for its heartbeat.

    Each sample is given the time since the one before, not one interval: the sampler
    looks every 2 ms only while the process waits, and every 5 ms (Python's switch
    interval) while a thread runs Python code, so equal weights would count waiting
    twice over and busy code at half its length.
    """

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(interval)
        self.owners: defaultdict[str, float] = defaultdict(float)  # seconds by owner
        self.callers: defaultdict[str, float] = defaultdict(float)  # Prefect's, by the fleetscore function that called it
        self.seconds = 0.0
        self._main = threading.get_ident()

    def __enter__(self) -> PrefectTime:
        self._started = self._last = time.perf_counter()
        return super().__enter__()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        super().__exit__(kind, exc, tb)
        self.seconds = time.perf_counter() - self._started

    def sample(self) -> None:
        frame = sys._current_frames().get(self._main)
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        self.owners[kind := owner(frame)] += elapsed
        if kind == "prefect":
            self.callers[caller(frame)] += elapsed

    def of(self, name: str) -> float:
        """Seconds of the block owned by ``name``."""
        return self.owners.get(name, 0.0)

    def by_caller(self) -> dict[str, float]:
        """Prefect's seconds (its heartbeat wait aside) by the fleetscore function that called it, most first."""
        return dict(sorted(self.callers.items(), key=lambda item: item[1], reverse=True))
