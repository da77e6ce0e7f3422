"""A real AzureVMCluster: created, used and deleted. Runs only with --create-external-resources.

Costs a few minutes of two small VMs. Never run from this repository's CI.
"""

import os
from datetime import timedelta

import pytest

from cluster.azure import REQUIRED
from cluster.clusters import open_cluster
from cluster.config import setting
from cluster.sweep import find_leftovers, management_clients

pytestmark = pytest.mark.external

CREDENTIALS = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")


def missing() -> list[str]:
    """The variables to export before this test can create a cluster."""
    azure = setting("cluster.azure")
    names = [f"DASK_FLEETSCORE__CLUSTER__AZURE__{k.upper().replace('-', '_')}" for k in REQUIRED if not azure.get(k)]
    return names + [name for name in CREDENTIALS if not os.environ.get(name)]


@pytest.fixture
def azure_settings():
    if missing():
        pytest.skip(f"export {' '.join(missing())} (a service principal that may create VMs in the resource "
                    "group), push the image (README 'Run on Azure'), then rerun with --create-external-resources")
    return setting("cluster.azure")


def test_a_real_azure_cluster_computes_and_leaves_nothing(azure_settings):
    with open_cluster("azure", adapt={"minimum": 1, "maximum": 1}, n_workers=1) as client:
        assert client.submit(sum, [1, 2]).result() == 3
        assert client.scheduler.address.startswith("tls://")
        cluster_id = client.cluster.uuid
    clients = management_clients(azure_settings["subscription-id"])
    left = find_leftovers(clients, azure_settings["resource-group"], {"cluster-id": cluster_id}, timedelta(0))
    assert left == [], f"left on Azure: {[str(item) for item in left]}"
