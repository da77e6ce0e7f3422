"""How flows retry the tasks that read or write the store: only what can pass, with backoff and jitter."""

from __future__ import annotations

from typing import Any

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
