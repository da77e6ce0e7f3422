"""LocalCluster lifecycle: whatever happens inside, no scheduler or worker process is left."""

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.config
import psutil
import pytest
from distributed import Client, LocalCluster
from distributed.security import Security

from cluster import clusters
from cluster.clusters import open_cluster
from cluster.config import DEFAULTS

# Plain TCP schedulers on this machine, for the tests that join one by address.
LOOPBACK_TRUSTED = {"fleetscore.cluster.allowed-addresses": ["127.0.0.1"],
                    "fleetscore.cluster.plain-tcp-hosts": ["127.0.0.1"]}

# A scheduler preload (the text of a module) whose setup never returns: a scheduler that never comes up.
NEVER_STARTS = "import asyncio\nasync def dask_setup(scheduler):\n    await asyncio.sleep(3600)\n"


@pytest.mark.usefixtures("no_leftovers")
def test_success_closes_cluster_and_workers():
    with open_cluster("local") as client:
        assert client.submit(sum, [1, 2]).result() == 3
        client.wait_for_workers(2, timeout=30)
    assert client.status == "closed"


@pytest.mark.usefixtures("no_leftovers")
def test_local_workers_get_fleetscores_allocator_settings_not_dasks_trim_at_64_kB():
    with open_cluster("local") as client:
        client.wait_for_workers(2, timeout=30)
        seen = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("MALLOC_MMAP_THRESHOLD_")))
    assert set(seen.values()) == {("67108864", "33554432")}


@pytest.mark.usefixtures("no_leftovers")
def test_a_failing_task_still_closes_everything():
    with pytest.raises(ZeroDivisionError):
        with open_cluster("local") as client:
            client.submit(lambda: 1 / 0).result()
    assert client.status == "closed"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "kubernetes"}, "unknown cluster kind 'kubernetes'"),
        ({"kind": "address", "address": None}, "needs a scheduler address"),
        ({"kind": "local", "adapt": {"minimum": 3, "maximum": 1}}, "impossible"),
    ],
)
def test_impossible_settings_are_refused_before_anything_starts(kwargs, message, child_pids):
    before = child_pids()
    with pytest.raises(ValueError, match=message):
        with open_cluster(**kwargs):
            pass
    assert child_pids() == before


def test_a_scheduler_that_never_answers_times_out_with_a_clear_error():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never speaks Dask
    try:
        with dask.config.set(LOOPBACK_TRUSTED), pytest.raises(TimeoutError, match="no Dask scheduler answered .* within 2s"):
            with open_cluster("address", address=f"tcp://127.0.0.1:{silent.getsockname()[1]}", start_timeout=2):
                pass
    finally:
        silent.close()


def test_an_existing_scheduler_is_used_and_left_running():
    with LocalCluster(n_workers=1, dashboard_address=None) as existing, dask.config.set(LOOPBACK_TRUSTED):
        with open_cluster("address", address=existing.scheduler_address) as client:
            assert client.submit(sum, [2, 2]).result() == 4
        with Client(existing) as again:
            assert len(again.scheduler_info()["workers"]) == 1


@pytest.mark.usefixtures("no_leftovers")
def test_a_scheduler_that_never_starts_is_a_timeout_not_a_hang():
    threads = threading.active_count()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="scheduler did not come up within 2s"):
        with open_cluster("local", start_timeout=2, scheduler_kwargs={"preload": [NEVER_STARTS]}):
            pytest.fail("the cluster cannot have started")
    assert time.monotonic() - started < 15
    time.sleep(0.5)
    assert threading.active_count() <= threads, "the cluster's event-loop thread was left running"


@pytest.mark.usefixtures("no_leftovers")
def test_workers_that_never_join_are_a_timeout_and_the_cluster_is_closed():
    # adapt with minimum 0 and no work never asks for a worker: the first one never joins.
    with pytest.raises(TimeoutError, match="no Dask worker joined the local cluster"):
        with open_cluster("local", adapt={"minimum": 0, "maximum": 1}, n_workers=0, start_timeout=2):
            pytest.fail("no worker can have joined")


@pytest.mark.parametrize(
    "address, trusted, message",
    [
        ("tls://203.0.113.9:8786", {}, r"203.0.113.9:8786 is not allowed: add .*allowed-addresses"),
        ("tls://203.0.113.9:8786", {"fleetscore.cluster.allowed-addresses": ["203.0.113.9:1"]}, "not allowed"),
        ("tcp://203.0.113.9:8786", {"fleetscore.cluster.allowed-addresses": ["203.0.113.9"]},
         "unencrypted tcp://: use tls://, or add 203.0.113.9 to fleetscore.cluster.plain-tcp-hosts"),
        ("203.0.113.9:8786", {"fleetscore.cluster.address": "tcp://203.0.113.9:8786"}, "unencrypted tcp://"),
        ("tls://203.0.113.9:8786", {"fleetscore.cluster.allowed-addresses": ["203.0.113.9"]},
         "no TLS settings are configured: set distributed.comm.tls.ca-file"),
        ("ws://203.0.113.9:8786", {"fleetscore.cluster.allowed-addresses": ["203.0.113.9"]}, "uses ws://"),
    ],
)
def test_untrusted_scheduler_addresses_are_refused_before_any_connection(address, trusted, message, monkeypatch):
    # 203.0.113.0/24 is reserved for documentation; should a check let it through, the first
    # connection (open_cluster's probe) fails the test instead of leaving this machine.
    monkeypatch.setattr(clusters, "_check_answers", lambda *a: pytest.fail("no connection may be tried"))
    with dask.config.set(trusted), pytest.raises(ValueError, match=message):
        with open_cluster("address", address=address):
            pytest.fail("nothing may be joined")


def test_a_tls_scheduler_in_the_allowlist_is_joined_with_the_configured_certificates():
    security = Security.temporary()
    with LocalCluster(n_workers=1, protocol="tls", security=security, dashboard_address=None) as existing:
        with dask.config.set({"distributed.comm.tls.ca-file": security.tls_ca_file,
                              "distributed.comm.tls.client.cert": security.tls_client_cert,
                              "distributed.comm.tls.client.key": security.tls_client_key,
                              "fleetscore.cluster.allowed-addresses": [existing.scheduler_address]}):
            assert existing.scheduler_address.startswith("tls://127.0.0.1:")
            with open_cluster("address", address=existing.scheduler_address) as client:
                assert client.submit(sum, [3, 3]).result() == 6


@pytest.mark.usefixtures("no_leftovers")
def test_a_scheduler_this_process_opened_is_joined_without_an_allowlist_entry():
    # What backfill does: its subflows join the local cluster it opened, by address.
    with open_cluster("local") as outer:
        address = outer.scheduler.address
        with open_cluster("address", address=address) as inner:
            assert inner.submit(sum, [1, 1]).result() == 2
    with pytest.raises(ValueError, match="is not allowed"):  # once closed, the address is a stranger's
        with open_cluster("address", address=address):
            pass


def machine_addresses() -> list[tuple[socket.AddressFamily, str]]:
    """This machine's own IPv4 and IPv6 addresses, less loopback and link-local (those need a scope id)."""
    found = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                ip = ipaddress.ip_address(address.address.split("%")[0])
                if not (ip.is_loopback or ip.is_link_local):
                    found.append((address.family, str(ip)))
    return found


def reachable(family: socket.AddressFamily, host: str, port: int) -> bool:
    try:
        with socket.socket(family) as probe:
            probe.settimeout(2)
            probe.connect((host, port))
    except OSError:
        return False
    return True


@pytest.mark.usefixtures("no_leftovers")
def test_the_local_scheduler_workers_and_dashboard_are_not_reachable_from_the_network():
    outside = machine_addresses()
    if not outside:
        pytest.skip("this machine has no address but loopback to try the listeners from")
    for family, host in outside:  # a listener on every interface is reachable there: the probe works
        with socket.socket(family) as control:
            control.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))
            control.listen()
            assert reachable(family, host, control.getsockname()[1]), f"the probe cannot reach {host}"
    packaged = DEFAULTS["fleetscore"]["cluster"]["local"]["dashboard-address"]
    with dask.config.set({"fleetscore.cluster.local.dashboard-address": packaged}):  # tests turn it off
        with open_cluster("local") as client:
            client.wait_for_workers(2, timeout=30)
            listeners = [client.scheduler.address, *client.scheduler_info()["workers"]]
            dashboard = client.cluster.scheduler.http_server.port
            ports = [int(a.rsplit(":", 1)[1]) for a in listeners] + [dashboard]
            assert len(ports) == 4  # scheduler, two workers, dashboard
            assert all(reachable(socket.AF_INET, "127.0.0.1", port) for port in ports)
            open_outside = [(host, port) for family, host in outside for port in ports
                            if reachable(family, host, port)]
            assert open_outside == [], f"listening beyond this machine: {open_outside}"


# What a worker may have imported once it has started: Dask's own modules, not the flow's. Every
# worker of a local cluster is spawned and imports the parent's main module again before it runs
# anything; for `fleetscore` that is flows.cli, which must leave scoring, Prefect and the flows to
# the commands that use them, or each worker would load them (seconds) before it could start.
FLEETSCORE_SCRIPT = """\
import json
import sys
from flows.cli import main  # the first line of the fleetscore script; each worker runs it again

if __name__ == "__main__":
    from cluster.clusters import open_cluster

    with open_cluster("local", dashboard_address=None) as client:
        client.wait_for_workers(2, timeout=60)
        loaded = client.run(lambda: sorted(m for m in ("prefect", "flows.score", "scoring.batch", "sklearn",
                                                       "deltalake", "pyarrow") if m in sys.modules))
    print(json.dumps(loaded))
"""


@pytest.mark.usefixtures("no_leftovers")
def test_workers_of_the_fleetscore_command_start_without_scoring_or_prefect(tmp_path):
    script = tmp_path / "fleetscore_main.py"
    script.write_text(FLEETSCORE_SCRIPT)
    root = Path(clusters.__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], cwd=root, env=os.environ | {"PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(loaded) == 2 and all(modules == [] for modules in loaded.values()), loaded
