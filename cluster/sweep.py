"""Find and delete the Azure resources that runs killed before closing their cluster left behind.

A run's cluster is closed by ``open_cluster`` and, when the flow process is
killed, by the flow's on_cancellation / on_crashed hooks. What still survives
(a hook that could not run, a VM created while its start timed out) carries our
tags; this module deletes it, by tag and age. VMs go first: their OS disks (which
Azure creates without tags, named after the VM) and NICs can only go once
detached, and a public IP only once its NIC is gone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cluster.azure import CREATED_TAG, FLOW_RUN_TAG
from cluster.config import setting

logger = logging.getLogger(__name__)

# In deletion order: operations group -> (which management client, its list method).
RESOURCE_KINDS = {
    "virtual_machines": ("compute", "list"),
    "disks": ("compute", "list_by_resource_group"),
    "network_interfaces": ("network", "list"),
    "public_ip_addresses": ("network", "list"),
}
_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "": "hours"}


@dataclass(frozen=True)
class Leftover:
    """One resource to delete: its kind (the SDK's operations group), name and our tags."""

    kind: str
    name: str
    created: str | None
    flow_run: str | None

    def __str__(self) -> str:
        return (f"{self.kind[:-1].replace('_', ' ')} {self.name} "
                f"(created {self.created or 'unknown'}, flow run {self.flow_run or 'unknown'})")


def parse_age(text: str) -> timedelta:
    """``30m``, ``6h``, ``2d`` or ``0`` as a ``timedelta`` (a bare number is hours)."""
    match = _AGE.match(str(text).strip())
    if not match:
        raise ValueError(f"age {text!r} is not understood: write it as 30m, 6h or 2d")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def parse_tags(pairs: list[str]) -> dict[str, str]:
    """``key=value`` strings as a dict, refusing anything else."""
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ValueError(f"tags must be key=value, not {bad}")
    return dict(p.split("=", 1) for p in pairs)


def _old_enough(tags: Mapping[str, str], cutoff: datetime | None) -> bool:
    """Created before ``cutoff``; a resource whose age is unknown is kept unless there is no cutoff."""
    if cutoff is None:
        return True
    created = tags.get(CREATED_TAG)
    return created is not None and datetime.fromisoformat(created) <= cutoff


def _tagged(items: list[Any], wanted: Mapping[str, str], cutoff: datetime | None) -> list[Any]:
    """The resources carrying every ``wanted`` tag, created before ``cutoff``."""
    return [r for r in items if wanted.items() <= (r.tags or {}).items() and _old_enough(r.tags or {}, cutoff)]


def _orphan_disks(disks: list[Any], tagged: list[Any], doomed_vms: set[str]) -> list[Any]:
    """OS disks of the tagged clusters: untagged, named ``dask-<cluster-id>-...``, not in use by a VM we keep."""
    prefixes = tuple(f"dask-{r.tags['cluster-id']}-" for r in tagged if "cluster-id" in (r.tags or {}))
    return [d for d in disks if prefixes and d.name.startswith(prefixes)
            and (d.managed_by is None or d.managed_by in doomed_vms)]


def find_leftovers(clients: Mapping[str, Any], group: str, wanted: Mapping[str, str],
                   older_than: timedelta, now: datetime | None = None) -> list[Leftover]:
    """Every resource of ``group`` to delete, in deletion order.

    Args:
        clients: ``{"compute": ComputeManagementClient, "network": NetworkManagementClient}``.
        group: the resource group the clusters were created in.
        wanted: tags a resource must all carry (e.g. ``{"app": "fleetscore"}`` or one flow run).
        older_than: only resources whose ``fleetscore-created`` tag is older; 0 disregards age.
        now: the current time (UTC), for tests.
    """
    cutoff = (now or datetime.now(UTC)) - older_than if older_than > timedelta(0) else None
    listed = {kind: list(getattr(getattr(clients[client], kind), method)(group))
              for kind, (client, method) in RESOURCE_KINDS.items()}
    chosen = {kind: _tagged(items, wanted, cutoff) for kind, items in listed.items()}
    tagged = [r for kind in ("virtual_machines", "network_interfaces", "public_ip_addresses") for r in chosen[kind]]
    vm_owners = {vm.id: vm for vm in chosen["virtual_machines"]}
    disks = {d.name: d for d in chosen["disks"] + _orphan_disks(listed["disks"], tagged, set(vm_owners))}
    chosen["disks"] = list(disks.values())
    return [_leftover(kind, r, vm_owners) for kind in RESOURCE_KINDS for r in chosen[kind]]


def _leftover(kind: str, resource: Any, vm_owners: Mapping[str, Any]) -> Leftover:
    """A ``Leftover`` whose tags are the resource's own or, for an untagged OS disk, its VM's."""
    owner = vm_owners.get(getattr(resource, "managed_by", None))
    tags = resource.tags or (owner.tags if owner else None) or {}
    return Leftover(kind, resource.name, tags.get(CREATED_TAG), tags.get(FLOW_RUN_TAG))


def delete(clients: Mapping[str, Any], group: str, leftovers: list[Leftover]) -> list[Leftover]:
    """Delete ``leftovers`` in order, each waited for; return those that could not be deleted.

    One failure does not stop the others: what remains is reported and the next sweep retries it.
    """
    failed = []
    for item in leftovers:
        operations = getattr(clients[RESOURCE_KINDS[item.kind][0]], item.kind)
        try:
            operations.begin_delete(group, item.name).result()
            logger.info("deleted %s", item)
        except Exception as exc:  # noqa: BLE001 - reported, retried by the next sweep
            logger.warning("could not delete %s: %s: %s", item, type(exc).__name__, exc)
            failed.append(item)
    return failed


def sweep(clients: Mapping[str, Any], group: str, wanted: Mapping[str, str], older_than: timedelta,
          dry_run: bool = True, now: datetime | None = None) -> tuple[list[Leftover], list[Leftover]]:
    """Find leftovers and, unless ``dry_run``, delete them; return (found, not deleted)."""
    found = find_leftovers(clients, group, wanted, older_than, now)
    for item in found:
        logger.info("%s %s", "would delete" if dry_run else "deleting", item)
    return found, ([] if dry_run else delete(clients, group, found))


def management_clients(subscription_id: str) -> dict[str, Any]:
    """Azure's compute and network clients, signed in as ``DefaultAzureCredential`` finds (env, identity, az)."""
    from azure.identity import DefaultAzureCredential
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient

    credential = DefaultAzureCredential()
    return {"compute": ComputeManagementClient(credential, subscription_id),
            "network": NetworkManagementClient(credential, subscription_id)}


def sweep_configured(wanted: Mapping[str, str] | None = None, older_than: str | None = None,
                     dry_run: bool = True) -> tuple[list[Leftover], list[Leftover]]:
    """Sweep the configured subscription and resource group (``fleetscore.cluster.azure``).

    Args:
        wanted: tags to match; default ``fleetscore.cluster.azure.tags``.
        older_than: an age such as ``6h``; default ``fleetscore.sweep.older-than``; ``0`` disregards age.
        dry_run: only list what would be deleted.
    """
    azure = setting("cluster.azure")
    missing = [key for key in ("subscription-id", "resource-group") if not azure.get(key)]
    if missing:
        raise ValueError(f"sweeping needs fleetscore.cluster.azure.{' and '.join(missing)}: "
                         "set them as for kind azure (README 'Run on Azure')")
    wanted = dict(wanted or azure["tags"])
    if not wanted:
        raise ValueError("refusing to sweep without a tag filter: it would match every VM of the resource group")
    return sweep(management_clients(azure["subscription-id"]), azure["resource-group"], wanted,
                 parse_age(setting("sweep.older-than", older_than)), dry_run)


def report(found: list[Leftover], failed: list[Leftover], dry_run: bool) -> list[str]:
    """One line per resource and a last line with the counts, for the command and the flow's log."""
    verb = "would delete" if dry_run else "deleted"
    lines = [f"{'not deleted' if item in failed else verb}: {item}" for item in found]
    return lines + [f"{len(found)} leftover resources found, "
                    f"{0 if dry_run else len(found) - len(failed)} deleted, {len(failed)} failed"]
