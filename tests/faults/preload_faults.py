"""A Dask worker preload that injects one fault, chosen by environment, into real worker processes.

``FLEETSCORE_FAULT=kill-worker``: the first worker to start a ``score_batch`` task
exits at once (once per run, tracked by a marker file), as a VM that dies would.
``FLEETSCORE_FAULT=kill-storage``: when the first ``score_batch`` finishes, the
worker stops the process ``FLEETSCORE_FAULT_PID`` (Azurite) with SIGTERM: storage goes
away mid-run. Not SIGKILL: Azurite saves its blob index every few seconds, so a kill
also loses writes it had acknowledged, which real Blob storage does not.
``FLEETSCORE_FAULT=stall``: every ``score_batch`` waits a minute before it starts, and
the worker writes its pid to the marker first, so a test can cancel the run mid-batch.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin


class InjectFault(WorkerPlugin):
    def __init__(self, fault: str, marker: Path, pid: int | None) -> None:
        self.fault, self.marker, self.pid = fault, marker, pid

    def _first(self) -> bool:
        try:
            self.marker.touch(exist_ok=False)
            return True
        except FileExistsError:
            return False

    def transition(self, key, start, finish, **kwargs) -> None:
        if "score_batch" not in str(key):
            return
        if self.fault == "kill-worker" and finish == "executing" and self._first():
            os._exit(1)
        if self.fault == "kill-storage" and finish == "memory" and self._first():
            os.kill(self.pid, signal.SIGTERM)
        if self.fault == "stall" and finish == "executing":
            with self.marker.open("a") as pids:
                pids.write(f"{os.getpid()}\n")
            time.sleep(60)


async def dask_setup(worker) -> None:
    fault = os.environ.get("FLEETSCORE_FAULT")
    if fault:
        pid = os.environ.get("FLEETSCORE_FAULT_PID")
        plugin = InjectFault(fault, Path(os.environ["FLEETSCORE_FAULT_MARKER"]), int(pid) if pid else None)
        await worker.plugin_add(plugin, name="inject-fault")
