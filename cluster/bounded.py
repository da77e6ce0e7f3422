"""Cluster classes whose start is bounded in time: a scheduler that never comes up is an error, not a hang.

``SpecCluster`` waits for its scheduler without a deadline; dask-cloudprovider's
``wait_for_scheduler`` polls the scheduler VM's port forever (dask-cloudprovider
#277). The mixin here puts ``start_timeout`` around the library's own ``_start``
and closes what was created when it runs out, so callers get a ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from distributed import LocalCluster
from distributed.core import Status


class BoundedStart:
    """Mixin for a ``SpecCluster`` subclass: ``_start`` fails after ``start_timeout`` seconds."""

    def __init__(self, *args: Any, start_timeout: float, **kwargs: Any) -> None:
        self._start_timeout = start_timeout
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            # SpecCluster leaves its event-loop thread running when a synchronous start fails.
            runner = getattr(self, "_loop_runner", None)
            if runner is not None:
                runner.stop()
            raise

    async def _start(self) -> None:
        try:
            await asyncio.wait_for(super()._start(), self._start_timeout)
        except TimeoutError:
            self.status = Status.failed  # _close only tears down running or failed clusters
            await self._close_after_timeout()
            raise TimeoutError(
                f"the {type(self).__name__} scheduler did not come up within {self._start_timeout:.0f}s "
                "(fleetscore.cluster.start-timeout); what was created has been closed"
            ) from None

    async def _close_after_timeout(self) -> None:
        """Close a half-started cluster; if that fails too, say what to run instead of hiding it."""
        try:
            await self._close()
        except Exception as exc:
            raise RuntimeError(
                f"the scheduler did not come up within {self._start_timeout:.0f}s and closing what was "
                f"created failed ({type(exc).__name__}: {exc}); run `fleetscore sweep` to delete leftovers"
            ) from exc


class BoundedLocalCluster(BoundedStart, LocalCluster):
    """``distributed.LocalCluster`` with a bounded start."""
