"""Fixtures of the cluster tests: leftover-process detection and a fake of Azure's management clients."""

from types import SimpleNamespace

import psutil
import pytest


def children() -> set[int]:
    """Our child processes, less multiprocessing's resource tracker, which lives as long as Python."""
    return {p.pid for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())}


@pytest.fixture
def no_leftovers():
    """Fail the test if it leaves a child process (a scheduler, nanny or worker) behind."""
    before = children()
    yield
    left = [psutil.Process(pid) for pid in children() - before]
    gone, alive = psutil.wait_procs(left, timeout=10)
    assert alive == [], f"processes left behind: {[p.cmdline() for p in alive]}"


@pytest.fixture
def child_pids():
    """The ``children`` function, for tests that compare process sets themselves."""
    return children


class _Poller:
    """What the SDK's ``begin_*`` calls return: ``result()`` and ``wait()``."""

    def __init__(self, value=None):
        self.value = value

    def result(self):
        return self.value

    def wait(self):
        return None


class _Operations:
    """One operations group (``virtual_machines``, ``disks``, ...) of one resource group, in memory."""

    def __init__(self, azure: "FakeAzure", kind: str):
        self.azure, self.kind = azure, kind

    def _items(self, group: str) -> dict:
        assert group == self.azure.group, f"call on resource group {group!r}"
        return self.azure.resources[self.kind]

    def list(self, group: str, *scope):
        return list(self._items(group).values())

    list_by_resource_group = list

    def get(self, group: str, name: str, *more):
        return self._items(group)[name]

    def begin_create_or_update(self, group: str, name: str, parameters: dict):
        self.azure.created.append((self.kind, name, parameters))
        return _Poller(self.azure.add(self.kind, name, parameters))

    def begin_delete(self, group: str, name: str):
        self.azure.deleted.append((self.kind, name))
        self._items(group).pop(name, None)  # Azure answers 204 for what is already gone
        return _Poller()


class FakeAzure:
    """A small stand-in for ``ComputeManagementClient`` and ``NetworkManagementClient`` at the SDK boundary.

    Keeps resources per kind, records every create and delete, gives NICs a
    private IP and, like Azure, gives each VM an untagged OS disk named after it.
    """

    RESOURCE_KINDS = ("virtual_machines", "disks", "network_interfaces", "public_ip_addresses",
             "network_security_groups", "subnets")

    def __init__(self, group: str = "fleet-rg", private_ip: str = "192.0.2.10"):
        self.group, self.private_ip = group, private_ip
        self.resources = {kind: {} for kind in self.RESOURCE_KINDS}
        self.created, self.deleted = [], []
        for kind in self.RESOURCE_KINDS:
            setattr(self, kind, _Operations(self, kind))

    def add(self, kind: str, name: str, parameters: dict | None = None, **attributes):
        parameters = parameters or {}
        item = SimpleNamespace(**{
            "name": name, "id": f"/subscriptions/s/resourceGroups/{self.group}/providers/x/{kind}/{name}",
            "tags": parameters.get("tags"), "managed_by": None, "ip_address": None,
            "ip_configurations": [SimpleNamespace(private_ip_address=self.private_ip)], **attributes})
        self.resources[kind][name] = item
        if kind == "virtual_machines":
            self.add("disks", f"{name}_OsDisk_1_0123456789abcdef", managed_by=item.id)
        return item


@pytest.fixture
def fake_azure():
    """An empty fake resource group with the network security group our settings name."""
    azure = FakeAzure()
    azure.add("network_security_groups", "fleet-nsg")
    azure.add("subnets", "default")
    return azure
