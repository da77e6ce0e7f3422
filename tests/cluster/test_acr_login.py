"""The VMs' registry login (``cluster/acr_login.py``) against local stand-ins for IMDS and the registry.

Azure's metadata service and a registry cannot be reached here, and the machine has
no Docker: a small HTTP server answers as IMDS and ACR's ``/oauth2/exchange`` do
(https://azure.github.io/acr/AAD-OAuth.html) and records what it was asked, and a
``docker`` script on ``PATH`` records its arguments and stdin. What this proves: the
requests' form and headers, and that the token reaches Docker only on stdin.
"""

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cluster import acr_login

IDENTITY = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/fleet-id"


class _Azure(BaseHTTPRequestHandler):
    """IMDS (GET, needs ``Metadata: true``) and the registry's token exchange (POST), on one port."""

    seen: list = []

    def do_GET(self):
        self.seen.append(("GET", self.path, self.headers.get("Metadata")))
        if self.headers.get("Metadata") != "true":
            return self._answer(400, {"error": "missing Metadata header"})
        self._answer(200, {"access_token": "entra-token"})

    def do_POST(self):
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.seen.append(("POST", self.path, form))
        self._answer(200, {"refresh_token": "acr-refresh-token"})

    def _answer(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def azure_endpoints():
    _Azure.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Azure)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def docker(tmp_path, monkeypatch):
    """A ``docker`` command that writes its arguments and stdin to files."""
    script = tmp_path / "bin" / "docker"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\ncat > {tmp_path}/stdin\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    return tmp_path


def test_the_identity_token_is_exchanged_and_given_to_docker_on_stdin(azure_endpoints, docker):
    acr_login.login(azure_endpoints, IDENTITY, imds=f"http://{azure_endpoints}/metadata", scheme="http")
    (get, path, metadata), (post, exchange, form) = _Azure.seen
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    assert metadata == "true" and query["msi_res_id"] == [IDENTITY]
    assert query["resource"] == ["https://management.azure.com/"]
    assert exchange == "/oauth2/exchange"
    assert form == {"grant_type": ["access_token"], "service": [azure_endpoints], "access_token": ["entra-token"]}
    args = (docker / "args").read_text().split()
    assert args == ["login", "--username", acr_login.TOKEN_USER, "--password-stdin", azure_endpoints]
    assert (docker / "stdin").read_text() == "acr-refresh-token"


def test_an_unreachable_metadata_service_is_retried_then_a_clear_failure(docker, capsys):
    with pytest.raises(SystemExit, match="acr login to r.azurecr.io failed: does the identity have AcrPull"):
        acr_login.login("r.azurecr.io", IDENTITY, attempts=2, pause=0, imds="http://127.0.0.1:9/metadata")
    assert capsys.readouterr().err.count("failed: URLError") == 2
    assert not (docker / "args").exists()
