"""The sweep against a fake of Azure's management clients: what crashed runs left goes, the rest stays."""

import uuid
from datetime import UTC, datetime, timedelta

import dask.config
import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings
from prefect.states import Crashed

from cluster import sweep
from cluster.azure import run_tags
from cluster.hooks import delete_run_cluster
from flows.cli import main
from flows.score import score_fleet

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
OLD, RECENT = "aaaa1111", "bbbb2222"


def leave_cluster(azure, cluster_id: str, flow_run: str, age: timedelta, public_ip: bool = False) -> None:
    """What a killed run leaves: a scheduler and a worker VM, each with its NIC and OS disk."""
    tags = run_tags({"app": "fleetscore"}, flow_run, NOW - age) | {"creator": "dask-cloudprovider",
                                                                    "cluster-id": cluster_id}
    for vm in (f"dask-{cluster_id}-scheduler", f"dask-{cluster_id}-worker-0f0f0f0f"):
        azure.add("network_interfaces", f"nic-{vm}", {"tags": tags})
        azure.add("virtual_machines", vm, {"tags": tags})
    if public_ip:
        azure.add("public_ip_addresses", f"ip-{cluster_id}", {"tags": tags})


@pytest.fixture
def leftovers(fake_azure):
    leave_cluster(fake_azure, OLD, "run-old", timedelta(hours=10), public_ip=True)
    leave_cluster(fake_azure, RECENT, "run-now", timedelta(minutes=20))
    fake_azure.add("virtual_machines", "someone-elses-vm", {"tags": {"app": "billing"}})
    # a disk whose VM an earlier, interrupted sweep already deleted
    fake_azure.add("disks", f"dask-{OLD}-worker-12345678_OsDisk_1_ffff")
    return {"compute": fake_azure, "network": fake_azure}


def names(found):
    return {(item.kind, item.name) for item in found}


def test_dry_run_lists_only_the_old_runs_resources_and_deletes_nothing(leftovers, fake_azure):
    found, failed = sweep.sweep(leftovers, "fleet-rg", {"app": "fleetscore"}, timedelta(hours=6), now=NOW)
    assert failed == [] and fake_azure.deleted == []
    assert names(found) == {
        ("virtual_machines", f"dask-{OLD}-scheduler"), ("virtual_machines", f"dask-{OLD}-worker-0f0f0f0f"),
        ("disks", f"dask-{OLD}-scheduler_OsDisk_1_0123456789abcdef"),
        ("disks", f"dask-{OLD}-worker-0f0f0f0f_OsDisk_1_0123456789abcdef"),
        ("disks", f"dask-{OLD}-worker-12345678_OsDisk_1_ffff"),
        ("network_interfaces", f"nic-dask-{OLD}-scheduler"),
        ("network_interfaces", f"nic-dask-{OLD}-worker-0f0f0f0f"),
        ("public_ip_addresses", f"ip-{OLD}"),
    }
    assert {item.flow_run for item in found if item.kind != "disks" or "ffff" not in item.name} == {"run-old"}


def test_a_sweep_deletes_vms_before_their_disks_and_nics_before_their_ip(leftovers, fake_azure):
    found, failed = sweep.sweep(leftovers, "fleet-rg", {"app": "fleetscore"}, timedelta(hours=6),
                                dry_run=False, now=NOW)
    assert failed == []
    order = [kind for kind, _ in fake_azure.deleted]
    assert order == sorted(order, key=list(sweep.RESOURCE_KINDS).index)
    assert len(fake_azure.deleted) == len(found) == 8
    left = {name for items in fake_azure.resources.values() for name in items}
    assert f"dask-{RECENT}-scheduler" in left and "someone-elses-vm" in left
    assert not any(OLD in name for name in left)


def test_a_hook_sweeps_one_flow_run_whatever_its_age(leftovers, fake_azure):
    found, _ = sweep.sweep(leftovers, "fleet-rg", {"fleetscore-flow-run": "run-now"}, timedelta(0),
                           dry_run=False, now=NOW)
    assert {item.flow_run for item in found} == {"run-now"}
    assert len(found) == 6  # two VMs, two disks, two NICs
    assert not any(RECENT in name for items in fake_azure.resources.values() for name in items)


def test_one_failed_delete_does_not_stop_the_others(leftovers, fake_azure):
    stuck = f"nic-dask-{OLD}-scheduler"
    real_delete = fake_azure.network_interfaces.begin_delete

    def refuse(group, name):
        if name == stuck:
            raise RuntimeError("NicInUse")
        return real_delete(group, name)

    fake_azure.network_interfaces.begin_delete = refuse
    found, failed = sweep.sweep(leftovers, "fleet-rg", {"app": "fleetscore"}, timedelta(hours=6),
                                dry_run=False, now=NOW)
    assert [item.name for item in failed] == [stuck]
    assert len(fake_azure.deleted) == len(found) - 1


@pytest.mark.parametrize("text, expected", [("30m", timedelta(minutes=30)), ("6h", timedelta(hours=6)),
                                            ("2d", timedelta(days=2)), ("0", timedelta(0))])
def test_ages_are_read_as_written(text, expected):
    assert sweep.parse_age(text) == expected


def test_bad_ages_and_tags_are_refused_with_the_expected_form():
    with pytest.raises(ValueError, match="30m, 6h or 2d"):
        sweep.parse_age("yesterday")
    with pytest.raises(ValueError, match="key=value"):
        sweep.parse_tags(["app"])
    assert sweep.parse_tags(["app=fleetscore", "env=a=b"]) == {"app": "fleetscore", "env": "a=b"}


@pytest.fixture
def azure_sdk(leftovers, fake_azure, monkeypatch):
    """The configured subscription, with Azure's client classes answering from the fake."""
    import azure.mgmt.compute
    import azure.mgmt.network

    monkeypatch.setattr(azure.mgmt.compute, "ComputeManagementClient", lambda credential, sub: fake_azure)
    monkeypatch.setattr(azure.mgmt.network, "NetworkManagementClient", lambda credential, sub: fake_azure)
    with dask.config.set({"fleetscore.cluster.azure.subscription-id": "00000000-0000-0000-0000-000000000000",
                          "fleetscore.cluster.azure.resource-group": "fleet-rg"}):
        yield fake_azure


def test_fleetscore_sweep_dry_run_lists_and_keeps(azure_sdk, capsys):
    assert main(["sweep", "--dry-run", "--older-than", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "14 leftover resources found, 0 deleted, 0 failed"
    assert sum(line.startswith("would delete: virtual machine dask-") for line in out) == 4
    assert not any("someone-elses-vm" in line for line in out)
    assert azure_sdk.deleted == []


def test_fleetscore_sweep_by_flow_run_tag_deletes(azure_sdk, capsys):
    assert main(["sweep", "--older-than", "0", "--tag", "fleetscore-flow-run=run-old"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "8 leftover resources found, 8 deleted, 0 failed"
    assert not any(OLD in name for items in azure_sdk.resources.values() for name in items)


def flow_run(run_id: str, cluster: str | None):
    return FlowRun(id=uuid.UUID(run_id), name="brave-otter", flow_id=uuid.uuid4(),
                   parameters={"cluster": cluster} if cluster else {})


OLD_RUN_ID = "00000000-0000-4000-8000-00000000000a"


@pytest.fixture
def no_api_logs():
    """Hooks log through Prefect's run logger; keep these records off the (absent) API."""
    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: False}):
        yield


@pytest.mark.usefixtures("no_api_logs")
def test_the_crash_hook_deletes_its_runs_azure_resources_whatever_their_age(fake_azure, azure_sdk):
    leave_cluster(fake_azure, "cccc3333", OLD_RUN_ID, timedelta(minutes=1))
    delete_run_cluster(score_fleet, flow_run(OLD_RUN_ID, "azure"), Crashed())
    assert {name for kind, name in fake_azure.deleted if kind == "virtual_machines"} == {
        "dask-cccc3333-scheduler", "dask-cccc3333-worker-0f0f0f0f"}
    assert not any("cccc3333" in name for items in fake_azure.resources.values() for name in items)
    assert any(OLD in name for name in fake_azure.resources["virtual_machines"])  # other runs stay


@pytest.mark.usefixtures("no_api_logs")
def test_the_hook_of_a_local_run_touches_no_cloud(fake_azure, azure_sdk):
    delete_run_cluster(score_fleet, flow_run(OLD_RUN_ID, "local"), Crashed())
    assert fake_azure.deleted == []
