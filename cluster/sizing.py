"""How many workers an hour gets: enough to finish its batches within a target time, no more than a cap.

Dask's ``adapt()`` decides, moment by moment, how many workers the queued work justifies;
what it cannot know is how large a cluster the hour is worth paying for. ``fit_hour`` is that
ceiling, a pure function of the hour's batch count and three settings
(``fleetscore.cluster.sizing``). ``KeepStarting`` is Dask's own ``Adaptive`` with one change:
Dask retires workers that have been asked for but have not joined yet *first* whenever its load
target drops below the planned size (``AdaptiveCore.recommendations``), so an Azure VM still
booting could be deleted while batches wait for it; ``KeepStarting`` keeps such workers while
the scheduler holds queued tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from distributed.deploy.adaptive import Adaptive
from distributed.protocol import pickle


@dataclass(frozen=True)
class Size:
    """The adaptive maximum chosen for an hour, and the arithmetic behind it, for the run's log."""

    workers: int
    reason: str


def fit_hour(batches: int, seconds_per_batch: float, target_minutes: float, threads_per_worker: int,
             minimum: int, cap: int) -> Size:
    """The fewest workers that score ``batches`` within ``target_minutes``, floored by ``minimum``, capped by ``cap``.

    Each worker runs ``threads_per_worker`` batches at a time, each taking ``seconds_per_batch``;
    a worker beyond one per ``threads_per_worker`` batches would have nothing to do. The cap wins
    over the target (it is what the hour may cost); the minimum wins over both, as in ``adapt``.

    Raises:
        ValueError: settings no cluster can be sized with, saying which to change.
    """
    if seconds_per_batch <= 0 or target_minutes <= 0:
        raise ValueError(f"seconds-per-batch {seconds_per_batch} and target-minutes {target_minutes} must be "
                         "positive: set fleetscore.cluster.sizing.seconds-per-batch and .target-minutes")
    if threads_per_worker < 1 or cap < 1 or minimum > cap:
        raise ValueError(f"cannot size a cluster of {threads_per_worker}-thread workers between minimum {minimum} "
                         f"and max-workers {cap}: set fleetscore.cluster.sizing.max-workers >= 1 and >= "
                         "fleetscore.cluster.adapt.minimum")
    needed = math.ceil(batches * seconds_per_batch / (target_minutes * 60 * threads_per_worker))
    useful = math.ceil(batches / threads_per_worker)
    workers = max(minimum, min(needed, useful, cap))
    reason = (f"{batches} batches x {seconds_per_batch:g} s / ({target_minutes:g} min x {threads_per_worker} "
              f"threads) -> {needed} workers, capped at {cap}, floor {minimum}: adapt maximum {workers}")
    return Size(workers, reason)


def _queued_tasks(dask_scheduler: Any) -> int:
    """Tasks waiting for a thread (queued) or for any worker at all (no-worker), read on the scheduler."""
    return len(dask_scheduler.queued) + len(dask_scheduler.unrunnable)


class KeepStarting(Adaptive):
    """``distributed``'s ``Adaptive``, except that workers still starting are not retired while tasks are queued.

    Used through the public seam ``cluster.adapt(Adaptive=KeepStarting, ...)``. Everything else
    (when to scale up, how far, which idle workers to retire, ``wait_count``) is Dask's.
    """

    async def recommendations(self, target: int) -> dict[str, Any]:
        """Dask's recommendation, less the retirement of workers not yet joined while work is queued."""
        advice = await super().recommendations(target)
        starting = self.requested - self.observed
        if advice["status"] != "down" or not starting.intersection(advice["workers"]):
            return advice
        if not await self._queued():
            return advice
        joined = [w for w in advice["workers"] if w not in starting]
        return {"status": "down", "workers": joined} if joined else {"status": "same"}

    async def _queued(self) -> int:
        """How many tasks the scheduler holds without a thread (one small call to the scheduler)."""
        response = await self.scheduler.run_function(function=pickle.dumps(_queued_tasks),
                                                     args=pickle.dumps(()), kwargs=pickle.dumps({}))
        if response["status"] != "OK":
            raise RuntimeError(f"asking the scheduler for its queued tasks failed: {response.get('exception')}")
        return int(response["result"])
