"""A pass-through HTTP proxy in front of Azurite that honours List Blobs' ``startFrom``.

delta-rs (through object_store) lists a table's ``_delta_log`` from a version with
``startFrom``, which Azure Blob Storage supports since service version 2026-02-06.
Azurite 3.35, the last release that runs on Node.js 20, ignores the parameter and
lists from the first blob, so delta-rs finds version 0 where it asked for version N
and fails every commit after the first with "Invalid table version". Azurite added
the parameter in 3.37 (Azure/Azurite#2688), which needs Node.js 22; drop this proxy
when the tests move to it.

The proxy forwards every request unchanged (signatures stay valid) and drops, from a
listing that asked for ``startFrom``, the blobs named before it: what Azure returns.
It runs in its own process: some deltalake calls (``history``) hold the GIL while they
wait for storage, which would starve a proxy thread in the test process.
"""

from __future__ import annotations

import html
import http.client
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_BLOB = re.compile(rb"<Blob>.*?</Blob>", re.DOTALL)
_NAME = re.compile(rb"<Name>(.*?)</Name>", re.DOTALL)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
_SET_BY_PROXY = {"server", "date"}


def drop_before(listing: bytes, start: str) -> bytes:
    """A List Blobs response body without the blobs whose name sorts before ``start``."""
    def keep(match: re.Match[bytes]) -> bytes:
        name = html.unescape(_NAME.search(match.group(0)).group(1).decode())
        return match.group(0) if name >= start else b""

    return _BLOB.sub(keep, listing)


def serve(upstream_port: int) -> None:
    """Listen on a free port of 127.0.0.1, print it, forward to Azurite's blob port until killed."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: tests print what matters
            pass

        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body is not None:
                headers["Content-Length"] = str(length)
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            except OSError:  # Azurite stopped: look like a storage outage, which clients retry
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            finally:
                upstream.close()
            start = parse_qs(urlsplit(self.path).query).get("startFrom")
            if self.command == "GET" and start and response.status == 200:
                data = drop_before(data, start[0])
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP | _SET_BY_PROXY:
                    self.send_header(key, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", response.getheader("Content-Length", "0"))
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = forward

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up early is no error
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    print(server.server_address[1], flush=True)
    server.serve_forever()


def _exit_with_parent(parent: int) -> None:
    """A test session that dies without closing the proxy must not leave it running."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


class ListingProxy:
    """The proxy in a child process; ``port`` is where clients connect instead of Azurite."""

    def __init__(self, upstream_port: int) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, str(upstream_port)], stdout=subprocess.PIPE)
        self.port = int(self.process.stdout.readline())

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
