"""A real ``prefect server start`` on 127.0.0.1 for the deployment tests, and a way to point at it.

The server runs in its own process group with its own ``PREFECT_HOME``, so it
never touches the developer's Prefect state. Tests that use it switch the API
URL for their module only (:func:`prefect_api`): the session-wide
``prefect_test_harness`` of the other flow tests is left as it is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

SERVER_START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(api: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy within {SERVER_START_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Start ``prefect server start`` on a free port; yield the environment that points at it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = home / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
             "--port", str(port)],
            env=os.environ | env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(api, server, log)
        yield env
    finally:
        stop_group(server)


@contextmanager
def prefect_api(url: str) -> Iterator[None]:
    """Send this process's Prefect calls to ``url``; flush logs and events there before leaving."""
    with temporary_settings(updates={PREFECT_API_URL: url}):
        try:
            yield
        finally:
            APILogWorker.drain_all()
            EventsWorker.drain_all()
