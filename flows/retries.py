"""How flows retry the tasks that read or write the store: only what can pass, with backoff and jitter."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.tasks import exponential_backoff

from scoring.store import is_transient


def _can_pass(task: Any, task_run: Any, state: State) -> bool:
    """Retry only storage errors that can pass (network, throttling, an outage), never a bad file or a bug."""
    return is_transient(state.result(raise_on_failure=False))


STORAGE_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _can_pass,
}
"""Prefect retries of a task that reads or writes the store: 2s, 4s, 8s with jitter, so that
many runs hitting a throttled storage account do not retry in lockstep."""

STORAGE_TASK: dict[str, Any] = {**STORAGE_RETRIES, "cache_policy": NO_CACHE, "persist_result": False}
"""Prefect options of a task that reads or writes the store: ``STORAGE_RETRIES``, and its inputs
never hashed (Prefect's default cache key hashes them, a second per commit at 100,000 devices)
and its result never persisted (a manifest, an hour's results): such a task must run again
anyway to see the store as it is now. Large inputs are also passed ``quote``-d, so that Prefect
does not walk them looking for futures (flows/score.py)."""
