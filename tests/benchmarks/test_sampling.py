"""Prefect's own time in a flow run, from samples of the main thread's stack."""

import logging
import time

import pytest
from prefect import flow, flow_engine
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.utilities.callables import call_with_parameters

from benchmarks.sampling import PrefectTime, caller, owner
from flows import limits
from scoring import layout
from scoring.generate import device_ids


def innermost_frame(call):
    """The frame an exception raised by ``call()`` was raised in, its callers still linked."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - any error will do: only its frames are looked at
        tb = exc.__traceback__
    while tb.tb_next:
        tb = tb.tb_next
    return tb.tb_frame


def test_a_frame_belongs_to_the_innermost_of_prefect_and_fleetscore_on_its_stack():
    assert owner(innermost_frame(lambda: layout.check_id("a/b"))) == "fleetscore"
    assert owner(innermost_frame(lambda: call_with_parameters(lambda: 1 / 0, {}))) == "prefect"  # a callback of Prefect's
    assert owner(innermost_frame(lambda: 1 / 0)) == "other"
    assert owner(None) == "other"
    assert caller(innermost_frame(lambda: layout.check_id("a/b"))) == "scoring.layout.check_id"
    assert caller(innermost_frame(lambda: 1 / 0)) == "engine"


def test_prefect_s_time_is_told_by_the_fleetscore_function_that_called_it(prefect_backend):
    with PrefectTime() as sampled:
        for _ in range(20):
            limits._ensure_limit("fleetscore-sampling-test")  # an API read, or a creation the first time
    assert next(iter(sampled.by_caller())) == "flows.limits._ensure_limit"  # the caller of most of it


@flow
def returns_at_once() -> int:
    return 1


def test_a_flow_run_s_own_time_is_prefect_s_engine(prefect_backend):
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), PrefectTime() as sampled:
        assert returns_at_once() == 1
    assert sampled.of("prefect") > 0 and sampled.of("fleetscore") == 0 == sampled.of("heartbeat")
    assert set(sampled.by_caller()) == {"engine"}
    assert sum(sampled.owners.values()) == pytest.approx(sampled.seconds, abs=0.05)  # every moment given to someone


class HeartbeatsOf:
    """What ``prefect.flow_engine._send_heartbeats`` asks of a flow run engine, its heartbeats going nowhere."""

    heartbeat_seconds = 30
    flow_run = None
    logger = logging.getLogger(__name__)

    def _build_heartbeat_event_template(self):
        return {}, []

    def _emit_flow_run_heartbeat(self, resource, related):
        pass


def test_the_wait_for_prefect_s_heartbeat_thread_is_counted_apart():
    """Prefect's heartbeat thread sleeps in whole seconds and is joined as the flow function returns."""
    with PrefectTime() as sampled, flow_engine._send_heartbeats(HeartbeatsOf()):
        pass  # the flow function returns at once: the thread has just begun its first second of sleep
    assert 0.5 < sampled.of("heartbeat") <= 1.5 and sampled.of("prefect") < 0.1


def test_busy_code_and_waiting_are_each_counted_at_their_length():
    """The sampler looks every 5 ms while Python code runs and every 2 ms while it waits: time, not samples, counts."""
    with PrefectTime() as sampled:
        started = time.perf_counter()
        device_ids(1_000_000)  # fleetscore's code, busy (0.4 s here)
        busy = time.perf_counter() - started
        time.sleep(0.3)  # waiting, in no one's code
    assert sampled.of("fleetscore") == pytest.approx(busy, rel=0.3)
    assert sampled.of("other") == pytest.approx(0.3, rel=0.3)


def test_time_in_fleetscore_s_code_is_not_prefect_s():
    with PrefectTime() as sampled:
        deadline = time.perf_counter() + 0.2
        while time.perf_counter() < deadline:
            layout.hour_label(layout.parse_hour("2026-11-27T10"))
    assert sampled.of("prefect") == 0 == sampled.of("heartbeat")
    assert sampled.of("fleetscore") > 0
