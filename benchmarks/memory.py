"""Peak resident memory of the benchmark process and of the processes it starts.

Sampled from a thread, since workers are other processes and ``ru_maxrss``
only knows the whole life of one process, not one measured phase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil
from distributed import Client

from benchmarks.periodic import Periodic
from cluster.config import worker_environ

MB = 1024 * 1024


class PeakMemory(Periodic):
    """Context manager: the driver's peak RSS, the largest peak of one worker, and processes watched apart.

    Workers are the processes started below the driver during the measured phase
    and the trees of ``include``; processes already running on entry (a Prefect
    test server, a JVM started for set-up) are left out. ``apart`` names processes
    (a scheduler) whose peaks are reported on their own, in ``apart_mb``, not as workers.
    """

    def __init__(self, interval: float = 0.05, include: tuple[int, ...] = (),
                 apart: dict[str, int] | None = None) -> None:
        super().__init__(interval)
        self.include = set(include)
        self.apart = dict(apart or {})
        self.driver_mb = 0.0
        self.worker_mb = 0.0
        self.workers_total_mb = 0.0
        self.apart_mb = {name: 0.0 for name in self.apart}
        self._me = psutil.Process(os.getpid())
        self._skip: set[int] = set()

    def watch(self, name: str, pid: int) -> None:
        """Report process ``pid``, started during the measurement, apart as ``name`` (not as a worker)."""
        self.apart_mb = {**self.apart_mb, name: 0.0}
        self.apart = {**self.apart, name: pid}  # rebound, not changed: the sampler thread may be iterating

    def __enter__(self) -> PeakMemory:
        kept = {c.pid for pid in self.include for c in psutil.Process(pid).children(recursive=True)} | self.include
        self._skip = {p.pid for p in self._me.children(recursive=True)} - kept
        return super().__enter__()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        super().__exit__(kind, exc, tb)
        self.sample()

    def sample(self) -> None:
        self.driver_mb = max(self.driver_mb, self._me.memory_info().rss / MB)
        for name, pid in self.apart.items():
            self.apart_mb[name] = max(self.apart_mb[name], _rss_mb(pid))
        apart = set(self.apart.values())
        sizes = [_rss_mb(c.pid) for c in self._me.children(recursive=True) if c.pid not in self._skip | apart]
        if sizes:
            self.worker_mb = max(self.worker_mb, max(sizes))
            self.workers_total_mb = max(self.workers_total_mb, sum(sizes))


def _rss_mb(pid: int) -> float:
    """A process's resident memory, 0 once it has exited."""
    try:
        return psutil.Process(pid).memory_info().rss / MB
    except psutil.Error:  # exited between listing and reading
        return 0.0


@dataclass(frozen=True)
class SeparateCluster:
    """A scheduler and its workers in processes of their own; the workers are the children of ``workers``."""

    address: str
    scheduler: int
    workers: int


def _start(role: str, log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, "-m", f"distributed.cli.dask_{role}", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()  # the worker command closes its nannies and workers on SIGTERM
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _address(file: Path, scheduler: subprocess.Popen, log: Path, timeout: float) -> str:
    """The scheduler's address once it has written its file; its log in the error if it never does."""
    deadline = time.monotonic() + timeout
    while not (file.exists() and file.stat().st_size):
        if scheduler.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the benchmark's Dask scheduler did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return json.loads(file.read_text())["address"]


@contextmanager
def separate_cluster(workers: int, memory_limit: str = "4GiB", timeout: float = 120) -> Iterator[SeparateCluster]:
    """A Dask scheduler and ``workers`` single-threaded workers on 127.0.0.1, each in its own process.

    A ``LocalCluster`` runs its scheduler inside the client's process, so that
    process's memory is the flow's and the scheduler's together. Here each is
    measured apart, as on Azure, where the scheduler has a VM of its own.
    """
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        file, logs = Path(folder) / "scheduler.json", Path(folder)
        scheduler = _start("scheduler", logs / "scheduler.log", "--host", "127.0.0.1", "--port", "0",
                           "--no-dashboard", "--scheduler-file", str(file))
        stack.callback(_stop, scheduler)
        address = _address(file, scheduler, logs / "scheduler.log", timeout)
        worker = _start("worker", logs / "worker.log", address, "--nworkers", str(workers), "--nthreads", "1",
                        "--memory-limit", memory_limit, "--no-dashboard", "--host", "127.0.0.1",
                        "--preload", "scoring.batch",  # imported at start, as a long-lived cluster's workers have
                        env=worker_environ() | os.environ)  # as the Azure VMs' containers get them; set ones win, as in a Nanny
        stack.callback(_stop, worker)
        with Client(address, timeout=timeout) as client:
            client.wait_for_workers(workers, timeout=timeout)
        yield SeparateCluster(address, scheduler.pid, worker.pid)
