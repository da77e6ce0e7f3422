"""Kind ``azure``: one VM per Dask worker through ``dask_cloudprovider.azure.AzureVMCluster``.

Our code only chooses and checks settings; VM creation, the cloud-init and the
teardown are dask-cloudprovider's. What we add: settings refused before anything
is created, a versioned image (never ``:latest``, dask-cloudprovider #201/#318),
a user-assigned managed identity on every VM instead of storage keys (it reads
storage and logs Docker in to the private registry, ``acr_login.py``), TLS always
on, a bounded start (#277) and tags on every resource that name the Prefect flow
run, so that ``fleetscore sweep`` can find what a killed run left (#220, #278).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dask.config
from dask_cloudprovider.azure import AzureVMCluster
from dask_cloudprovider.azure.azurevm import AzureVMScheduler

from cluster.bounded import BoundedStart
from cluster.config import setting, snake, worker_environ

logger = logging.getLogger(__name__)

FLOW_RUN_TAG = "fleetscore-flow-run"
CREATED_TAG = "fleetscore-created"
REQUIRED = ("subscription-id", "location", "resource-group", "vnet", "security-group", "identity")
# Long-lived secrets that open a whole account (or tenant application): never on a VM unless allowed.
KEY_VARIABLES = ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_CONNECTION_STRING",
                 "AZURE_STORAGE_CLIENT_SECRET", "AZURE_CLIENT_SECRET")
# Always set on the VMs when set here: adlfs and delta-rs need the account's name (not a secret)
# to reach it through the VM's identity (DefaultAzureCredential, resp. IMDS managed identity).
ACCOUNT_NAME = "AZURE_STORAGE_ACCOUNT_NAME"
# Checked strictly: the id is pasted unquoted into the VMs' cloud-init and shell.
_IDENTITY = re.compile(r"/subscriptions/[\w-]+/resourceGroups/[\w.-]+/providers/"
                       r"Microsoft\.ManagedIdentity/userAssignedIdentities/[\w-]+", re.IGNORECASE | re.ASCII)
_REGISTRY = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?")
_LOGIN_SCRIPT = Path(__file__).with_name("acr_login.py")
# Values are pasted into `docker run -e KEY="value"` inside a single-quoted cloud-init line.
_UNSAFE_VALUE = re.compile(r"[\"'`$\\\n\r]")
_BAD_TAG_KEY = re.compile(r"[<>%&\\?/]")
# Settings that are ours, not AzureVMCluster keywords.
_OURS = ("image-repository", "forward-env", "tags", "start-timeout", "n-workers", "identity",
         "registry-login", "allow-keys-on-vms")


async def _port_open(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether something accepts TCP connections at ``host:port``, asked without blocking the loop."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


class AzureSchedulerVM(AzureVMScheduler):
    """dask-cloudprovider's scheduler VM, waited for without blocking the event loop.

    The library's wait calls a blocking ``socket.connect`` in the event loop: on an
    unreachable private IP each try blocks for the OS connect timeout (minutes),
    during which no start timeout can fire (https://github.com/dask/dask-cloudprovider/issues/275,
    /issues/277). Drop this class when upstream's wait no longer blocks.
    """

    async def wait_for_scheduler(self) -> None:
        _, address = (self.external_address or self.address).split("://")
        host, port = address.rsplit(":", 1)
        self.cluster._log(f"Waiting for scheduler to run at {host}:{port}")
        while not await _port_open(host, int(port)):
            await asyncio.sleep(1)
        self.cluster._log("Scheduler is running")


class AzureRunCluster(BoundedStart, AzureVMCluster):
    """``AzureVMCluster`` with a bounded start whose resources also carry the run's tags."""

    def __init__(self, *, run_tags: Mapping[str, str], **kwargs: Any) -> None:
        self._run_tags = dict(run_tags)
        super().__init__(**kwargs)

    async def _start(self) -> None:
        # AzureVMCluster.__init__ sets its own class and then starts (SpecCluster), so this is the one
        # seam between the two; goes with AzureSchedulerVM.
        self.scheduler_class = AzureSchedulerVM
        await super()._start()

    def get_tags(self) -> dict[str, str]:
        """dask-cloudprovider's tags (creator, cluster-id) plus ours, on every VM, NIC and public IP."""
        return super().get_tags() | self._run_tags


def azure_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``fleetscore.cluster.azure`` with keyword overrides (``vm_size`` or ``vm-size``) applied.

    Keys are made ``kebab-case`` at the top level: dask reads ``DASK_..._RESOURCE_GROUP`` as
    ``resource_group`` before our defaults (``resource-group``) are merged, and keeps its spelling.
    """
    merged = {k.replace("_", "-"): v for k, v in setting("cluster.azure").items()}
    merged.update({k.replace("_", "-"): v for k, v in (overrides or {}).items()})
    return merged


def check(settings: Mapping[str, Any]) -> None:
    """Raise ``ValueError``, saying how to fix it, for settings no Azure cluster can start with."""
    missing = [k for k in REQUIRED if not settings.get(k)]
    if missing:
        raise ValueError(
            f"cluster kind 'azure' needs {', '.join(missing)}: set fleetscore.cluster.azure.<key> "
            f"(e.g. DASK_FLEETSCORE__CLUSTER__AZURE__{missing[0].upper().replace('-', '_')}=...); "
            "README 'Run on Azure' lists what to create once"
        )
    image_tag_problem(docker_image(settings))
    if not 30 <= int(settings["disk-size"]) <= 1023:
        raise ValueError(f"disk-size {settings['disk-size']} GiB is impossible: Azure OS disks of "
                         "Ubuntu images take 30 to 1023; set fleetscore.cluster.azure.disk-size in that range")
    image = settings.get("vm-image") or {}
    if not settings["bootstrap"] and image.get("publisher", "Canonical") == "Canonical" and "id" not in image:
        raise ValueError("bootstrap false needs a VM image with Docker installed, but vm-image is a stock "
                         "Ubuntu image: set fleetscore.cluster.azure.bootstrap to true or vm-image to your image")
    if float(settings["start-timeout"]) <= 0:
        raise ValueError("fleetscore.cluster.azure.start-timeout must be a positive number of seconds")
    check_tags(settings.get("tags") or {})
    check_identity(settings)


def check_identity(settings: Mapping[str, Any]) -> None:
    """Refuse settings that would put a storage key on the VMs or leave them without the identity."""
    if not _IDENTITY.fullmatch(str(settings["identity"])):
        raise ValueError(
            f"identity {settings['identity']!r} is not a user-assigned identity's resource id: set "
            "fleetscore.cluster.azure.identity to /subscriptions/<id>/resourceGroups/<group>/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/<name> (az identity show --query id)")
    if "identity" in (settings.get("extra-vm-options") or {}):
        raise ValueError("extra-vm-options sets an identity, which fleetscore.cluster.azure.identity already "
                         "attaches: remove it from extra-vm-options")
    keys = sorted(set(settings.get("forward-env") or []) & set(KEY_VARIABLES))
    if keys and not settings.get("allow-keys-on-vms"):
        raise ValueError(
            f"forward-env lists {', '.join(keys)}: root on any VM could read it from the cloud-init and "
            "open the whole account. The VMs reach storage through fleetscore.cluster.azure.identity: "
            "remove it from forward-env, or set allow-keys-on-vms: true to accept the risk")
    if settings["registry-login"]:
        registry_host(docker_image(settings))


def registry_host(image: str) -> str:
    """The registry of ``image`` that the VMs log in to with their identity."""
    host, _, path = image.partition("/")
    if not path or not ("." in host or ":" in host) or not _REGISTRY.fullmatch(host):
        raise ValueError(
            f"docker image {image!r} names no private registry to log in to: push it to your Azure "
            "Container Registry (<name>.azurecr.io/...), or set fleetscore.cluster.azure.registry-login "
            "false for a public image")
    return host


def registry_login_command(registry: str, identity: str) -> str:
    """The cloud-init command that logs Docker in to ``registry`` with ``identity`` (``acr_login.py``).

    The script travels base64-encoded: cloud-init pastes each command into its YAML
    unquoted, and base64, a host name and a checked resource id need no quoting.
    """
    script = base64.b64encode(_LOGIN_SCRIPT.read_bytes()).decode()
    return f"echo {script} | base64 -d | python3 - {registry} {identity}"


def docker_image(settings: Mapping[str, Any]) -> str:
    """The configured image, else this project's image at the installed fleetscore version."""
    return settings.get("docker-image") or f"{settings['image-repository']}:{version('fleetscore')}"


def image_tag_problem(image: str) -> None:
    """Refuse an image without a pinned tag: a moving tag lets workers drift from the client's versions."""
    name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
    if not name or "/" in tag or tag == "latest":
        raise ValueError(
            f"docker image {image!r} has no pinned tag: set fleetscore.cluster.azure.docker-image to "
            "<repository>:<version> (or @sha256:<digest>), built from this checkout; ':latest' is refused"
        )


def check_tags(tags: Mapping[str, Any]) -> None:
    """Refuse tags Azure would reject halfway through creating a cluster."""
    for key, value in tags.items():
        if _BAD_TAG_KEY.search(str(key)) or len(str(key)) > 512 or len(str(value)) > 256:
            raise ValueError(f"tag {key!r} is not a valid Azure tag: keys of at most 512 characters "
                             "without <>%&\\?/ and values of at most 256; fix fleetscore.cluster.azure.tags")


def forwarded_env(names: list[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables among ``names`` that are set here, to be set in the containers on the VMs.

    Only names are ever logged. A value the cloud-init line cannot quote is refused
    by name, because pasting it would break, or inject into, the ``docker run`` command.
    """
    environ = os.environ if environ is None else environ
    found = {name: environ[name] for name in names if environ.get(name)}
    unsafe = [name for name, value in found.items() if _UNSAFE_VALUE.search(value)]
    if unsafe:
        raise ValueError(f"{', '.join(unsafe)} contain quotes, $, backslashes or newlines, which cannot be "
                         "passed to the VMs' docker command; use a credential without them (e.g. a SAS token)")
    logger.info("forwarding to the Azure VMs: %s", ", ".join(found) or "no storage credentials")
    return found


def run_tags(extra: Mapping[str, Any], flow_run_id: str | None, now: datetime | None = None) -> dict[str, str]:
    """Tags for every resource of this run: configured ones, the creation time and the flow run id."""
    tags = {str(k): str(v) for k, v in extra.items()}
    tags[CREATED_TAG] = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if flow_run_id:
        tags[FLOW_RUN_TAG] = flow_run_id
    return tags


def current_flow_run_id() -> str | None:
    """The id of the Prefect flow run this code runs in, if any."""
    from prefect.runtime import flow_run

    return flow_run.id


def vm_env(settings: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the containers on the VMs get as environment: the workers' allocator settings, the account name and ``forward-env``."""
    return worker_environ() | forwarded_env([ACCOUNT_NAME, *(settings.get("forward-env") or [])], environ)


def cluster_keywords(settings: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``AzureVMCluster`` keywords from checked settings: identity attached, TLS on, no workers until scaled.

    ``debug`` stays off because dask-cloudprovider then prints the cloud-init,
    which holds whatever ``forward-env`` forwards.
    """
    keywords = snake({k: v for k, v in settings.items() if k not in _OURS})
    image = docker_image(settings)
    login = [registry_login_command(registry_host(image), settings["identity"])] if settings["registry-login"] else []
    identity = {"type": "UserAssigned", "user_assigned_identities": {settings["identity"]: {}}}
    keywords.update(worker_options=snake(settings.get("worker-options") or {}),
                    docker_image=image, env_vars=dict(env), security=True, n_workers=0, debug=False,
                    extra_bootstrap=[*login, *(settings.get("extra-bootstrap") or [])],
                    extra_vm_options={**(settings.get("extra-vm-options") or {}), "identity": identity})
    return keywords


def rendered_cloud_init(settings: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str:
    """The cloud-init a VM of these settings (checked first) gets when the flow runs with ``environ``.

    It is what root on any VM can read, so it can be reviewed (and is, by the fault
    suite's secrets case) before a first run. Rendered offline by dask-cloudprovider's
    public ``get_cloud_init``, which builds the cluster object (that needs a running
    event loop, hence ``asyncio.run``) and creates nothing on Azure.
    """
    async def render() -> str:
        return AzureVMCluster.get_cloud_init(**cluster_keywords(settings, vm_env(settings, environ)))

    check(settings)
    with restored_dask_config():
        return asyncio.run(render())


@contextmanager
def restored_dask_config() -> Iterator[None]:
    """Undo what ``VMCluster`` writes into the global ``dask.config`` (TLS required, the VM image).

    dask-cloudprovider sets ``distributed.comm.require-encryption`` and its temporary
    certificates process-wide and never unsets them, so any later cluster in the
    same process (a test, a local run after an Azure run) would demand TLS.
    """
    saved = copy.deepcopy(dask.config.config)
    try:
        yield
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)


def azure_cluster(settings: Mapping[str, Any], start_timeout: float) -> AzureRunCluster:
    """Create (and start) the cluster's scheduler VM; workers come with ``scale``/``adapt``."""
    env = vm_env(settings)
    tags = run_tags(settings.get("tags") or {}, current_flow_run_id())
    logger.info("starting an Azure cluster of %s in %s/%s, tags %s",
                docker_image(settings), settings["location"], settings["resource-group"], tags)
    return AzureRunCluster(run_tags=tags, start_timeout=start_timeout, **cluster_keywords(settings, env))
