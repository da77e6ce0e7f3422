"""One context manager that yields a Dask client for the configured cluster and always closes it.

The cluster and client are entered on one ``ExitStack``, so they are closed on
success, on an exception and on ``KeyboardInterrupt`` or a cancellation that
unwinds the flow, in reverse order of creation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

from distributed import Client, LocalCluster
from distributed.core import rpc
from distributed.security import Security

from cluster.config import setting

KINDS = ("local", "address")


def _adapt_bounds(adapt: dict[str, int] | None) -> dict[str, int] | None:
    if not adapt:
        return None
    lo, hi = adapt.get("minimum", 1), adapt.get("maximum", 1)
    if not 0 <= lo <= hi or hi < 1:
        raise ValueError(
            f"adaptive bounds minimum={lo} maximum={hi} are impossible: "
            "set fleetscore.cluster.adapt so that 0 <= minimum <= maximum and maximum >= 1"
        )
    return {"minimum": lo, "maximum": hi}


def _local_cluster(adapt: dict[str, int] | None, overrides: dict[str, Any]) -> LocalCluster:
    options = {k.replace("-", "_"): v for k, v in setting("cluster.local").items()} | overrides
    if adapt:
        options["n_workers"] = max(adapt["minimum"], min(options["n_workers"], adapt["maximum"]))
    cluster = LocalCluster(**options)
    if adapt:
        cluster.adapt(**adapt)
    return cluster


@contextmanager
def open_cluster(
    kind: str | None = None,
    *,
    address: str | None = None,
    adapt: dict[str, int] | None = None,
    start_timeout: float | None = None,
    **cluster_options: Any,
) -> Iterator[Client]:
    """Yield a client of a new (or, for ``address``, an existing) cluster; close what was opened.

    Args:
        kind: ``local`` or ``address``; default ``fleetscore.cluster.kind``.
        address: scheduler address for ``kind="address"``.
        adapt: ``{"minimum": m, "maximum": n}`` workers; default ``fleetscore.cluster.adapt``.
        start_timeout: seconds until the first worker must be up, else ``TimeoutError``.
        cluster_options: keywords for the cluster class, over ``fleetscore.cluster.<kind>``.
    """
    kind = setting("cluster.kind", kind)
    if kind not in KINDS:
        raise ValueError(f"unknown cluster kind {kind!r}: set fleetscore.cluster.kind to one of {KINDS}")
    address = setting("cluster.address", address)
    if kind == "address" and not address:
        raise ValueError("cluster kind 'address' needs a scheduler address: set fleetscore.cluster.address")
    bounds = _adapt_bounds(setting("cluster.adapt", adapt))
    timeout = float(setting("cluster.start-timeout", start_timeout))
    logging.getLogger("distributed").setLevel(setting("cluster.log-level").upper())
    with ExitStack() as stack:
        if kind == "address":
            _check_answers(address, timeout)
            client = stack.enter_context(Client(address, timeout=timeout))
        else:
            cluster = stack.enter_context(_local_cluster(bounds, cluster_options))
            client = stack.enter_context(Client(cluster, timeout=timeout))
        _check_ready(client, kind, timeout)
        yield client


def _check_answers(address: str, timeout: float) -> None:
    """Raise ``TimeoutError`` unless a Dask scheduler answers at ``address`` within ``timeout``.

    ``Client(address, timeout=...)`` waits forever on a port that accepts
    connections but never answers (a VM still booting, a wrong port), so ask first.
    """
    async def identity() -> dict:
        async with rpc(address, connection_args=Security().get_connection_args("client")) as scheduler:
            return await scheduler.identity()

    try:
        with ThreadPoolExecutor(1) as pool:  # own event loop, whatever loop the caller runs
            pool.submit(asyncio.run, asyncio.wait_for(identity(), timeout)).result()
    except (TimeoutError, OSError) as exc:
        raise TimeoutError(
            f"no Dask scheduler answered at {address} within {timeout:.0f}s "
            f"(fleetscore.cluster.start-timeout): {type(exc).__name__} {exc}".rstrip()
        ) from None


def _check_ready(client: Client, kind: str, timeout: float) -> None:
    """Fail fast, with a reason, when no worker comes up or versions differ."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise TimeoutError(
            f"no Dask worker joined the {kind} cluster within {timeout:.0f}s "
            "(fleetscore.cluster.start-timeout); the cluster is being closed"
        ) from None
    try:
        client.get_versions(check=True)
    except ValueError as exc:
        raise RuntimeError(
            f"scheduler, workers and client run different package versions; "
            f"build them all from requirements.lock: {exc}"
        ) from None
