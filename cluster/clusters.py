"""One context manager that yields a Dask client for the configured cluster and always closes it.

The cluster and client are entered on one ``ExitStack``, so they are closed on
success, on an exception and on ``KeyboardInterrupt`` or a cancellation that
unwinds the flow, in reverse order of creation. What differs between cluster
kinds is one row of ``CLUSTER_KINDS``: adding a kind is adding a row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from distributed import Client, SpecCluster
from distributed.comm import parse_address, parse_host_port
from distributed.core import rpc
from distributed.security import Security

from cluster.bounded import BoundedLocalCluster
from cluster.config import setting, snake
from cluster.sizing import KeepStarting, fit_hour

# Schedulers that open_cluster started in this process and has not closed yet: joining one
# by address (backfill's subflows do) needs no allowlist entry, it is this process's own.
_OPENED: set[str] = set()


def _matches(entry: str, host: str, port: int) -> bool:
    """Whether an allowlist entry (``host``, ``host:port``, with or without ``scheme://``) names host:port."""
    location = parse_address(entry)[1]
    try:
        return parse_host_port(location) == (host, port)
    except ValueError:  # no port: any port of that host
        return location.strip("[]") == host


def check_address(address: str) -> None:
    """Refuse a scheduler address this process may not trust, before anything connects to it.

    A Dask client unpickles what the scheduler sends, so the scheduler must be one
    we chose: the configured ``fleetscore.cluster.address``, one listed in
    ``allowed-addresses`` or one this process opened. And it must prove who it is:
    ``tls://`` with our TLS settings, unless its host is in ``plain-tcp-hosts``.

    Raises:
        ValueError: saying which setting admits the address, if it should be.
    """
    if address in _OPENED:
        return
    scheme, location = parse_address(address)
    host, port = parse_host_port(location)
    allowed = [a for a in (setting("cluster.address"), *setting("cluster.allowed-addresses")) if a]
    if not any(_matches(entry, host, port) for entry in allowed):
        raise ValueError(f"scheduler address {address} is not allowed: add {host}:{port} to "
                         "fleetscore.cluster.allowed-addresses (or set fleetscore.cluster.address) if you trust it")
    if scheme == "tcp":
        if host not in setting("cluster.plain-tcp-hosts"):
            raise ValueError(f"scheduler address {address} is unencrypted tcp://: use tls://, or add {host} to "
                             "fleetscore.cluster.plain-tcp-hosts if the network to it is trusted")
    elif scheme == "tls":
        security = Security()
        if not (security.tls_ca_file and security.tls_client_cert):
            raise ValueError(f"scheduler address {address} is tls:// but no TLS settings are configured: set "
                             "distributed.comm.tls.ca-file and distributed.comm.tls.client.cert/.key "
                             "(e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE=/path/ca.pem)")
    else:
        raise ValueError(f"scheduler address {address} uses {scheme}://: fleetscore joins tls:// (or tcp:// "
                         "for a host in fleetscore.cluster.plain-tcp-hosts) schedulers only")


def _adapt_bounds(adapt: dict[str, int] | None, kind: str) -> dict[str, int] | None:
    """Checked adaptive bounds; a ``maximum`` left ``None`` (not sized for an hour) is the kind's cost cap."""
    if not adapt:
        return None
    lo, hi = adapt.get("minimum", 1), adapt.get("maximum")
    hi = _cap(kind) if hi is None else hi
    if not 0 <= lo <= hi or hi < 1:
        raise ValueError(
            f"adaptive bounds minimum={lo} maximum={hi} are impossible: "
            "set fleetscore.cluster.adapt so that 0 <= minimum <= maximum and maximum >= 1"
        )
    return {"minimum": lo, "maximum": hi}


def _start_local(options: dict[str, Any], timeout: float, stack: ExitStack) -> tuple[SpecCluster, int]:
    """A ``LocalCluster`` scheduler without workers, and how many to ask for (``n-workers``)."""
    local = snake(setting("cluster.local")) | options
    size = local.pop("n_workers")
    return stack.enter_context(BoundedLocalCluster(n_workers=0, start_timeout=timeout, **local)), size


def _azure_settings(options: dict[str, Any]) -> dict[str, Any]:
    """Azure settings, refused before anything is created (imported here: ``azure`` is an extra)."""
    from cluster import azure

    settings = azure.azure_settings(options)
    azure.check(settings)
    return settings


def _local_threads(options: dict[str, Any]) -> int:
    """Threads of each local worker (``threads-per-worker``)."""
    return int((snake(setting("cluster.local")) | options)["threads_per_worker"])


def _azure_threads(options: dict[str, Any]) -> int:
    """Threads of each worker VM (``worker-options.nthreads``); 1 if unset, which errs towards more VMs."""
    return int(snake(options.get("worker-options") or {}).get("nthreads", 1))


def _start_azure(options: dict[str, Any], timeout: float, stack: ExitStack) -> tuple[SpecCluster, int]:
    """The scheduler VM of a new Azure cluster, with ``dask.config`` restored when it closes."""
    from cluster import azure

    stack.enter_context(azure.restored_dask_config())
    return stack.enter_context(azure.azure_cluster(options, timeout)), options["n-workers"]


def _delete_azure_run(run_id: str, log: Callable[[str], object]) -> None:
    """Delete every Azure resource tagged with the flow run ``run_id``, whatever its age."""
    from cluster.azure import FLOW_RUN_TAG
    from cluster.sweep import report, sweep_configured

    found, failed = sweep_configured({FLOW_RUN_TAG: run_id}, older_than="0", dry_run=False)
    for line in report(found, failed, dry_run=False):
        log(line)
    if failed:
        raise RuntimeError(f"{len(failed)} resources of run {run_id} are left: run `fleetscore sweep`")


@dataclass(frozen=True)
class ClusterKind:
    """What fleetscore does differently for one kind of cluster.

    Attributes:
        start: starts a new cluster's scheduler (without workers, so that only this step
            is bounded by the start timeout) on the stack; returns it and the number of
            workers to ask for. ``None``: the kind joins an existing scheduler by address.
        settings: checks and completes the kind's options before anything is started.
        shared: a backfill opens one for its whole range and each hour's run joins it by address.
        cleanup: deletes, by flow run id, what a run killed before closing its cluster left, logging
            each line; ``None`` when nothing outlives the flow process (used by ``cluster.hooks``).
        threads: each worker's threads, from the kind's checked settings: the sizing divides the
            hour's work by it. ``None``: fleetscore does not size or adapt the kind's workers.
    """

    start: Callable[[dict[str, Any], float, ExitStack], tuple[SpecCluster, int]] | None
    settings: Callable[[dict[str, Any]], dict[str, Any]] = dict
    shared: bool = False
    cleanup: Callable[[str, Callable[[str], object]], None] | None = None
    threads: Callable[[dict[str, Any]], int] | None = None


CLUSTER_KINDS: dict[str, ClusterKind] = {
    "local": ClusterKind(start=_start_local, shared=True, threads=_local_threads),
    "azure": ClusterKind(start=_start_azure, settings=_azure_settings, cleanup=_delete_azure_run,
                         threads=_azure_threads),
    "address": ClusterKind(start=None),
}
KINDS = tuple(CLUSTER_KINDS)
"""The cluster kinds' names, for ``fleetscore.cluster.kind`` and the command's ``--cluster``."""


def _cap(kind: str) -> int:
    """The most workers a run of ``kind`` may have (``fleetscore.cluster.sizing.max-workers``)."""
    cap = (setting("cluster.sizing.max-workers") or {}).get(kind)
    if not isinstance(cap, int) or cap < 1:
        raise ValueError(f"fleetscore.cluster.sizing.max-workers.{kind} is {cap!r}: set it to the most "
                         f"workers a run of kind {kind!r} may cost, a whole number >= 1")
    return cap


def size_for_hour(kind: str | None, batches: int, adapt: dict[str, int] | None) -> tuple[dict[str, int] | None, str]:
    """The adaptive bounds of a run that scores ``batches``, and one line for its log saying why.

    A ``maximum`` in ``adapt`` (a flow parameter) or in ``fleetscore.cluster.adapt`` wins;
    otherwise it is ``fit_hour`` of the batches with ``fleetscore.cluster.sizing``.

    Args:
        kind: the cluster kind; default ``fleetscore.cluster.kind``.
        batches: the hour's batches, known from the manifest before the cluster opens.
        adapt: bounds given for this run, as ``open_cluster`` takes them; default ``fleetscore.cluster.adapt``.

    Raises:
        ValueError: an unknown kind or sizing settings that cannot work, before anything is started.
    """
    kind = setting("cluster.kind", kind)
    how = CLUSTER_KINDS.get(kind)
    if how is None:
        raise ValueError(f"unknown cluster kind {kind!r}: set fleetscore.cluster.kind to one of {KINDS}")
    bounds = setting("cluster.adapt", adapt)
    if how.threads is None:
        return None, (f"cluster kind {kind}: an existing scheduler whose workers fleetscore does not start: "
                      "not sized, no adapt")
    if bounds is None:
        return None, f"fleetscore.cluster.adapt is null: a fixed {kind} cluster, not sized for the hour"
    if bounds.get("maximum") is not None:
        return bounds, f"adapt maximum {bounds['maximum']} as given (parameter or fleetscore.cluster.adapt), not sized"
    sizing = setting("cluster.sizing")
    size = fit_hour(batches, float(sizing["seconds-per-batch"]), float(sizing["target-minutes"]),
                    how.threads(how.settings({})), bounds.get("minimum", 1), _cap(kind))
    return bounds | {"maximum": size.workers}, size.reason


def _scale(cluster: SpecCluster, size: int, bounds: dict[str, int] | None) -> None:
    """Ask for ``size`` workers (within the adaptive bounds), then let ``adapt`` move within them.

    ``KeepStarting`` is Dask's ``Adaptive``, except that it does not retire workers still
    starting (VMs booting) while tasks are queued, which Dask's own would do first.
    """
    if bounds:
        cluster.scale(max(bounds["minimum"], min(size, bounds["maximum"])))
        cluster.adapt(Adaptive=KeepStarting, **bounds)
    else:
        cluster.scale(size)


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
        kind: ``local``, ``azure`` or ``address``; default ``fleetscore.cluster.kind``.
        address: scheduler address for ``kind="address"``; it must pass ``check_address``.
        adapt: ``{"minimum": m, "maximum": n}`` workers; default ``fleetscore.cluster.adapt``.
        start_timeout: seconds until the scheduler and a first worker must be up, else
            ``TimeoutError``; default ``fleetscore.cluster.start-timeout`` (for azure,
            ``fleetscore.cluster.azure.start-timeout``: VMs take minutes).
        cluster_options: keywords over ``fleetscore.cluster.<kind>`` (``LocalCluster``
            keywords for local, settings such as ``vm_size`` for azure).

    Raises:
        ValueError: impossible settings, or a scheduler address not to be trusted, before anything is started.
        TimeoutError: the scheduler or the first worker did not come up in time.
    """
    kind = setting("cluster.kind", kind)
    if kind not in CLUSTER_KINDS:
        raise ValueError(f"unknown cluster kind {kind!r}: set fleetscore.cluster.kind to one of {KINDS}")
    how = CLUSTER_KINDS[kind]
    address = setting("cluster.address", address)
    if how.start is None:
        if not address:
            raise ValueError(f"cluster kind {kind!r} needs a scheduler address: set fleetscore.cluster.address")
        check_address(address)
    bounds = _adapt_bounds(setting("cluster.adapt", adapt), kind) if how.start else None
    cluster_options = how.settings(cluster_options)
    timeout = float(setting("cluster.start-timeout", start_timeout or cluster_options.get("start-timeout")))
    deadline = time.monotonic() + timeout
    logging.getLogger("distributed").setLevel(setting("cluster.log-level").upper())
    with ExitStack() as stack:
        if how.start is None:
            _check_answers(address, timeout)
            client = stack.enter_context(Client(address, timeout=timeout))
        else:
            cluster, size = how.start(cluster_options, timeout, stack)
            _OPENED.add(cluster.scheduler_address)
            stack.callback(_OPENED.discard, cluster.scheduler_address)
            client = stack.enter_context(Client(cluster, timeout=timeout))
            _scale(cluster, size, bounds)
        _check_ready(client, kind, timeout, max(deadline - time.monotonic(), 1.0))
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


def _check_ready(client: Client, kind: str, timeout: float, remaining: float) -> None:
    """Fail fast, with a reason, when no worker comes up before the deadline or versions differ."""
    try:
        client.wait_for_workers(1, timeout=remaining)
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
