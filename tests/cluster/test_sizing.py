"""Sizing an hour's cluster: the arithmetic of ``fit_hour``, and Dask's ``adapt`` on workers that start slowly."""

import asyncio
import sys
import time

import dask.config
import pytest
from distributed import Client, Scheduler, SpecCluster
from distributed.deploy.adaptive import Adaptive
from distributed.deploy.spec import ProcessInterface

from cluster.clusters import open_cluster, size_for_hour
from cluster.sizing import KeepStarting, fit_hour

BOOT_SECONDS = 4.0


@pytest.mark.parametrize(
    "batches, seconds, minutes, threads, minimum, cap, workers",
    [
        (1000, 1.5, 15, 2, 1, 20, 1),     # 100,000 devices, 2-thread VMs: 1500 s of work fits one VM's 1800 s
        (1000, 6.0, 15, 2, 1, 20, 4),     # the same hour where a batch costs 6 s (reads from Blob): 6000 / 1800
        (1000, 60.0, 15, 2, 1, 20, 20),   # far more work than the target allows: the cap wins
        (3, 60.0, 1, 1, 1, 20, 3),        # never more workers than batches to run
        (0, 1.5, 15, 1, 2, 20, 2),        # an empty hour still gets the minimum
    ],
)
def test_the_size_is_the_work_over_the_target_within_floor_and_cap(batches, seconds, minutes, threads, minimum, cap,
                                                                   workers):
    size = fit_hour(batches, seconds, minutes, threads, minimum, cap)
    assert size.workers == workers
    assert size.reason.startswith(f"{batches} batches x {seconds:g} s / ({minutes:g} min x {threads} threads) -> ")
    assert size.reason.endswith(f"capped at {cap}, floor {minimum}: adapt maximum {workers}")


@pytest.mark.parametrize(
    "args, setting",
    [
        ((10, 0, 15, 1, 1, 4), "seconds-per-batch"),
        ((10, 1.5, -1, 1, 1, 4), "target-minutes"),
        ((10, 1.5, 15, 1, 1, 0), "max-workers"),
        ((10, 1.5, 15, 1, 5, 4), "max-workers"),
    ],
)
def test_impossible_sizing_settings_say_which_to_change(args, setting):
    with pytest.raises(ValueError, match=setting):
        fit_hour(*args)


# Valid settings of an Azure cluster, which are checked before its size is derived.
AZURE = {"fleetscore.cluster.azure.subscription-id": "00000000-0000-0000-0000-000000000000",
         "fleetscore.cluster.azure.location": "westeurope", "fleetscore.cluster.azure.resource-group": "fleet-rg",
         "fleetscore.cluster.azure.vnet": "fleet-vnet", "fleetscore.cluster.azure.security-group": "fleet-nsg",
         "fleetscore.cluster.azure.identity": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/"
         "fleet-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/fleet-id"}
UNSIZED = {"fleetscore.cluster.adapt": {"minimum": 1, "maximum": None}}


def test_an_azure_hour_of_a_million_devices_is_sized_from_the_settings():
    """5,000 batches (of 200 devices) x 3 s / (15 min x 2 threads per VM) = 8.3: 9 VMs, within the cap of 20."""
    with dask.config.set(AZURE | UNSIZED):
        bounds, reason = size_for_hour("azure", 5_000, None)
    assert bounds == {"minimum": 1, "maximum": 9}
    assert reason == "5000 batches x 3 s / (15 min x 2 threads) -> 9 workers, capped at 20, floor 1: adapt maximum 9"


def test_a_local_hour_is_capped_and_a_given_maximum_wins():
    with dask.config.set(UNSIZED | {"fleetscore.cluster.sizing.target-minutes": 1}):
        assert size_for_hour("local", 50, None)[0] == {"minimum": 1, "maximum": 3}  # 150 s / 60 s
        assert size_for_hour("local", 1000, None)[0] == {"minimum": 1, "maximum": 4}  # 50 wanted, local cap 4
        assert size_for_hour("local", 1000, {"minimum": 2, "maximum": 2}) == (
            {"minimum": 2, "maximum": 2}, "adapt maximum 2 as given (parameter or fleetscore.cluster.adapt), not sized")
        with dask.config.set({"fleetscore.cluster.sizing.max-workers.local": 0}):
            with pytest.raises(ValueError, match="max-workers.local is 0"):
                size_for_hour("local", 1000, None)


def test_an_existing_scheduler_is_not_sized_and_says_so():
    bounds, reason = size_for_hour("address", 1000, None)
    assert bounds is None and "not sized, no adapt" in reason


class BootingWorker(ProcessInterface):
    """A worker that, like an Azure VM, is created at once but joins the scheduler seconds later.

    ``start`` returns as soon as the process exists (so ``SpecCluster`` counts it as requested),
    and the process sleeps ``boot`` seconds before it runs a real ``dask worker``. A ``Nanny``
    would not do: ``SpecCluster`` awaits a nanny until its worker has joined, so a local worker is
    never "requested but not arrived" and Dask's choice of whom to retire could not be seen.
    """

    def __init__(self, scheduler: str, name: str, boot: float) -> None:
        super().__init__(scheduler, name)
        self.scheduler, self.name, self.boot = scheduler, name, boot

    async def start(self) -> None:
        code = (f"import time; time.sleep({self.boot}); from distributed.cli.dask_worker import main; "
                f"main(['{self.scheduler}', '--name', '{self.name}', '--nthreads', '1', '--no-nanny', "
                "'--no-dashboard'])")
        self.process = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
        await super().start()

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await super().close()


def busy(seconds: float) -> float:
    """A real task that holds its worker's thread, as a batch does."""
    time.sleep(seconds)
    return seconds


def slow_cluster() -> SpecCluster:
    return SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                       worker={"cls": BootingWorker, "options": {"boot": BOOT_SECONDS}})


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize("policy, keeps", [(Adaptive, False), (KeepStarting, True)])
def test_workers_still_starting_are_kept_while_batches_are_queued(policy, keeps):
    """Four workers asked for, none joined, twelve 1 s batches queued: Dask's load target (12 x its 0.5 s
    guess for unknown tasks / 5 s = 2) is below the plan, so plain ``Adaptive`` retires starting
    workers first; ``KeepStarting`` keeps them until they join and take the queued batches."""
    with slow_cluster() as cluster, Client(cluster) as client:
        cluster.scale(4)
        adaptive = cluster.adapt(Adaptive=policy, minimum=1, maximum=4, interval="200ms")
        queued = client.map(busy, [1.0] * 12, pure=False)
        client.wait_for_workers(4 if keeps else 1, timeout=60)
        assert not all(f.done() for f in queued)
        retired = [rec["workers"] for _, rec in adaptive.log if rec["status"] == "down"]
        if keeps:
            assert retired == [] and cluster.observed == cluster.plan == set(range(4))
        else:
            assert retired, "plain Adaptive no longer retires starting workers first: KeepStarting may go"


@pytest.mark.usefixtures("no_leftovers")
def test_scale_up_follows_the_queued_batches():
    """One worker and two batches: nothing more is asked for; twenty queued: the cluster grows to the maximum."""
    with slow_cluster() as cluster, Client(cluster) as client:
        cluster.scale(1)
        client.wait_for_workers(1, timeout=60)
        adaptive = cluster.adapt(Adaptive=KeepStarting, minimum=1, maximum=4, interval="200ms")
        client.gather(client.map(busy, [1.0] * 2, pure=False))
        assert len(cluster.plan) == 1 and list(adaptive.log) == []
        queued = client.map(busy, [1.0] * 20, pure=False)
        client.wait_for_workers(4, timeout=60)
        assert not all(f.done() for f in queued)
        assert [rec for _, rec in adaptive.log] == [{"status": "up", "n": 4}]


def test_a_cluster_opened_without_an_hour_to_size_adapts_up_to_max_workers_with_keep_starting():
    with dask.config.set(UNSIZED), open_cluster("local", n_workers=1, dashboard_address=None) as client:
        adaptive = client.cluster._adaptive
        assert isinstance(adaptive, KeepStarting) and (adaptive.minimum, adaptive.maximum) == (1, 4)
