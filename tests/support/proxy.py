"""A loopback HTTP proxy that drops connections: in front of Azurite (or any HTTP service), it resets a
share of requests before forwarding them and a share after the service answered (the client never sees
the answer of a call that happened), and cuts a share of answers short mid-body (the client reads fewer
bytes than the answer's Content-Length: ``http.client.IncompleteRead``, which is not an OSError).

Examples
--------
    with FaultyProxy("127.0.0.1", azurite.port, reset_before=0.05, reset_after=0.05) as proxy:
        ...  # talk to http://127.0.0.1:{proxy.port}/...
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FaultyProxy"]


class FaultyProxy:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        reset_before: float = 0.0,
        reset_after: float = 0.0,
        seed: int = 1,
        exempt: str = "",
        truncate: float = 0.0,
        only: str = "",
    ) -> None:
        """``exempt``: a regular expression of ``METHOD path`` never faulted; ``only``: one of
        ``METHOD path User-Agent`` that a request must match to be faulted."""
        self.target = (host, port)
        self.reset_before = reset_before
        self.reset_after = reset_after
        self.truncate = truncate
        self.only = re.compile(only) if only else None
        self.random = random.Random(seed)
        self.exempt = re.compile(exempt) if exempt else None
        self.lock = threading.Lock()
        self.counts = {"forwarded": 0, "reset-before": 0, "reset-after": 0, "truncated": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _reset(self) -> None:
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    draw = proxy.random.random()
                if proxy.exempt is not None and proxy.exempt.search(f"{self.command} {self.path}"):
                    draw = 1.0
                agent = self.headers.get("User-Agent", "")
                if proxy.only is not None and not proxy.only.search(f"{self.command} {self.path} {agent}"):
                    draw = 1.0
                if draw < proxy.reset_before:
                    proxy._count("reset-before")
                    self._reset()
                    return
                upstream = http.client.HTTPConnection(*proxy.target, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                upstream.close()
                if draw < proxy.reset_before + proxy.reset_after:
                    proxy._count("reset-after")
                    self._reset()
                    return
                cut = len(payload) > 1 and draw < proxy.reset_before + proxy.reset_after + proxy.truncate
                proxy._count("truncated" if cut else "forwarded")
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload[: len(payload) // 2] if cut else payload)
                if cut:
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
