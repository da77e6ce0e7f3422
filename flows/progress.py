"""Following a run's batches from the flow process: a progress bar and the largest cluster size."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from distributed import Client
from prefect.context import FlowRunContext
from tqdm import tqdm

SAMPLE_SECONDS = 1.0
"""Least time between two samples of the cluster size: Dask's ``adapt`` decides once a second, and
asking the scheduler after every batch would cost a round trip per batch (500 at 100,000 devices)."""


def _from_deployment() -> bool:
    """Whether the current flow run was started from a deployment.

    Read from the run the engine holds: ``prefect.runtime.deployment.id`` asks the API
    for the flow run again when there is no deployment (20 to 60 ms of every local run).
    """
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


class BatchProgress:
    """Counts finished batches and samples the cluster size as they finish.

    An adaptive cluster grows and shrinks during a run, so the size at the end
    says little; the largest size seen is what capacity planning needs. It is
    sampled after the first batch and then at most every ``SAMPLE_SECONDS``. The bar
    is drawn only for local runs (no deployment), where someone watches a
    terminal; deployment runs have the progress log lines in the UI instead.

    Args:
        client: client of the run's cluster.
        total: number of batches.
        label: shown before the bar, e.g. the hour being scored.
        show_bar: draw the bar; default: only when the run is not from a deployment.
    """

    def __init__(self, client: Client, total: int, label: str, show_bar: bool | None = None) -> None:
        self.client = client
        self.peak_workers = self._workers()
        self._next_sample = 0.0
        visible = not _from_deployment() if show_bar is None else show_bar
        self.bar = tqdm(total=total, desc=label, unit="batch", file=sys.stderr, disable=not visible)

    def _workers(self) -> int:
        return int(self.client.scheduler_info(n_workers=0)["n_workers"])

    def update(self) -> None:
        """One more batch finished."""
        self.bar.update(1)
        if time.monotonic() >= self._next_sample:
            self.peak_workers = max(self.peak_workers, self._workers())
            self._next_sample = time.monotonic() + SAMPLE_SECONDS

    def __enter__(self) -> BatchProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.bar.close()
