"""Log Docker in to an Azure Container Registry with the VM's managed identity; runs on the VM at boot.

Stock Ubuntu has no ``az`` CLI (installing it at every boot adds a minute and a
package source) but has ``python3`` (cloud-init runs on it) and gets Docker from the
bootstrap. So this file, standard library only and Python 3.8+, is shipped in the
cloud-init and does what ``az acr login --identity`` does
(https://azure.github.io/acr/AAD-OAuth.html):

1. ask the instance metadata service (IMDS) for an Entra ID token of the identity;
2. exchange it at ``https://<registry>/oauth2/exchange`` for a registry refresh token;
3. ``docker login`` with the fixed user ``00000000-0000-0000-0000-000000000000`` and
   that token on stdin, never on a command line or in a log.

The identity needs *AcrPull* on the registry. Usage:
``python3 acr_login.py <registry host> <identity resource id>``.
"""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

IMDS = "http://169.254.169.254/metadata/identity/oauth2/token"
ARM = "https://management.azure.com/"  # the audience the registry's exchange accepts
TOKEN_USER = "00000000-0000-0000-0000-000000000000"  # ACR's user name for a refresh token


def identity_token(identity: str, imds: str = IMDS) -> str:
    """An Entra ID access token of the user-assigned identity ``identity`` (its resource id)."""
    query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": ARM, "msi_res_id": identity})
    request = urllib.request.Request(f"{imds}?{query}", headers={"Metadata": "true"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["access_token"]


def refresh_token(registry: str, access_token: str, scheme: str = "https") -> str:
    """The registry's refresh token for ``access_token`` (ACR's ``/oauth2/exchange``)."""
    body = urllib.parse.urlencode({"grant_type": "access_token", "service": registry,
                                   "access_token": access_token}).encode()
    with urllib.request.urlopen(f"{scheme}://{registry}/oauth2/exchange", data=body, timeout=30) as response:
        return json.load(response)["refresh_token"]


def login(registry: str, identity: str, attempts: int = 20, pause: float = 6.0,
          imds: str = IMDS, scheme: str = "https") -> None:
    """Log Docker in, retrying: right after boot IMDS and a new role assignment can take a minute."""
    for attempt in range(1, attempts + 1):
        try:
            token = refresh_token(registry, identity_token(identity, imds), scheme)
            break
        except (OSError, KeyError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            print(f"acr login to {registry}: attempt {attempt} failed: {type(exc).__name__}", file=sys.stderr)
            if attempt == attempts:
                raise SystemExit(f"acr login to {registry} failed: does the identity have AcrPull on it?")
            time.sleep(pause)
    subprocess.run(["docker", "login", "--username", TOKEN_USER, "--password-stdin", registry],
                   input=token.encode(), check=True)


if __name__ == "__main__":
    login(sys.argv[1], sys.argv[2])
