"""Mapping plain batch functions over a Dask cluster, reporting progress from the flow process.

Workers run no Prefect code: logs from Dask workers do not reliably reach
Prefect, so progress is reported here as each batch finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from distributed import Client, as_completed

PROGRESS_LINES = 20
"""Progress lines per run, whatever its number of batches: Prefect ships every log line to its API."""


def run_batches(
    client: Client,
    func: Callable[..., Any],
    batches: Sequence[tuple[str, tuple[Any, ...]]],
    on_error: Callable[[int, BaseException], Any],
    logger: logging.Logger | logging.LoggerAdapter,
    retries: int,
    on_done: Callable[[], Any] | None = None,
) -> list[Any]:
    """Run ``func(*args)`` for each ``(name, args)`` on the cluster; return results in batch order.

    A batch that still fails after ``retries`` Dask retries (a lost worker, a
    storage error) is turned into a result by ``on_error(index, exc)``, so one
    batch never sinks the others. Results are small: parts are written by workers.
    ``on_done()`` is called after each batch, e.g. to move a progress bar; the log
    says ``batch i/n done`` for at most ``PROGRESS_LINES`` of them, and every failure.
    """
    every = -(-len(batches) // PROGRESS_LINES)
    futures = {
        client.submit(func, *args, key=f"{func.__name__}-{name}", retries=retries, pure=False): i
        for i, (name, args) in enumerate(batches)
    }
    results: list[Any] = [None] * len(batches)
    for done, future in enumerate(as_completed(futures), start=1):
        index = futures.pop(future)  # dropped once read: the worker then frees the result, and stays flat
        try:
            results[index] = future.result()
        except Exception as exc:  # noqa: BLE001 - reported per batch, then the run goes on
            logger.warning("batch %s failed after %d retries: %s", batches[index][0], retries, exc)
            results[index] = on_error(index, exc)
        if done % every == 0 or done == len(batches):
            logger.info("batch %d/%d done (%s)", done, len(batches), batches[index][0])
        if on_done:
            on_done()
    return results
