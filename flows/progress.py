"""Following a run's batches from the flow process: a progress bar and the largest cluster size."""

from __future__ import annotations

import sys
from types import TracebackType

from distributed import Client
from prefect.runtime import deployment
from tqdm import tqdm


class BatchProgress:
    """Counts finished batches and samples the cluster size after each one.

    An adaptive cluster grows and shrinks during a run, so the size at the end
    says little; the largest size seen is what capacity planning needs. The bar
    is drawn only for local runs (no deployment), where someone watches a
    terminal; deployment runs have the per-batch log lines in the UI instead.

    Args:
        client: client of the run's cluster.
        total: number of batches.
        label: shown before the bar, e.g. the hour being scored.
        show_bar: draw the bar; default: only when the run is not from a deployment.
    """

    def __init__(self, client: Client, total: int, label: str, show_bar: bool | None = None) -> None:
        self.client = client
        self.peak_workers = self._workers()
        visible = deployment.id is None if show_bar is None else show_bar
        self.bar = tqdm(total=total, desc=label, unit="batch", file=sys.stderr, disable=not visible)

    def _workers(self) -> int:
        return int(self.client.scheduler_info(n_workers=0)["n_workers"])

    def update(self) -> None:
        """One more batch finished."""
        self.bar.update(1)
        self.peak_workers = max(self.peak_workers, self._workers())

    def __enter__(self) -> BatchProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.bar.close()
