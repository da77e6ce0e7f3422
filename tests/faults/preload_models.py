"""A Dask worker preload that switches the live model version while a run is scoring.

``FLEETSCORE_SWITCH_STORE`` and ``FLEETSCORE_SWITCH_VERSION``: when the first
``score_batch`` starts executing on any worker (once per run, tracked by the
marker file ``FLEETSCORE_FAULT_MARKER``), the worker makes that version live,
as a training run publishing at that moment would.
"""

from __future__ import annotations

import os
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

from scoring import models
from scoring.store import Store


class SwitchVersion(WorkerPlugin):
    def __init__(self, store: str, version: str, marker: Path) -> None:
        self.store, self.version, self.marker = store, version, marker

    def transition(self, key, start, finish, **kwargs) -> None:
        if "score_batch" not in str(key) or finish != "executing":
            return
        try:
            self.marker.touch(exist_ok=False)
        except FileExistsError:
            return
        models.activate(Store(self.store), self.version)


async def dask_setup(worker) -> None:
    if os.environ.get("FLEETSCORE_SWITCH_VERSION"):
        plugin = SwitchVersion(os.environ["FLEETSCORE_SWITCH_STORE"], os.environ["FLEETSCORE_SWITCH_VERSION"],
                               Path(os.environ["FLEETSCORE_FAULT_MARKER"]))
        await worker.plugin_add(plugin, name="switch-version")
