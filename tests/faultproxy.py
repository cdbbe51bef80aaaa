"""A fault-injecting HTTP proxy on loopback, in front of a real OpenAI-compatible server.

    with FaultProxy(upstream, plan=["garbage", "pass"], cycle=True) as proxy:
        ...  # point the client at proxy.base_url

Each ``POST .../chat/completions`` takes the next mode of ``plan`` (cycled with ``cycle``,
else ``then`` once the plan is used up), or, with ``rate``, one of ``faults`` with that
probability (seeded). Every other request is forwarded as is. The modes:

- ``pass``: forwarded to the real server, its reply returned unchanged.
- ``garbage``: status 200, ``Content-Type: application/json``, a body that is not JSON.
- ``html``: status 200, an HTML error page (``text/html``), as a misconfigured gateway sends.
- ``out_of_range``: a well-formed completion whose content is ``out_of_range_content``.
- ``empty``: a well-formed completion whose content is the empty string.
  (Both report ``usage`` = (prompt_tokens, completion_tokens).)
- ``echo_401`` / ``echo_400``: that status, with an error text that quotes the bearer key sent.
- ``slow``: waits ``slow_s`` seconds, then forwards.
- ``drop``: reads the request, then closes the connection without a reply.

``counts`` holds requests per mode, ``keys_seen`` the bearer keys sent. Only ``pass`` and
``slow`` reach the upstream server, so the other modes also work without one. The proxy
binds 127.0.0.1 only, answers at most ``max_requests`` completions (then drops) and shuts
itself down after ``lifetime_s`` seconds.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import json
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

MODES = (
    "pass",
    "garbage",
    "html",
    "out_of_range",
    "empty",
    "echo_401",
    "echo_400",
    "slow",
    "drop",
)
GARBAGE = b'this is not JSON {"task": 3, "response"'
HTML = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1>"
    b"<p>The upstream server returned an invalid response.</p></body></html>"
)


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        plan: Sequence[str] = (),
        *,
        cycle: bool = False,
        then: str = "pass",
        rate: float = 0.0,
        faults: Sequence[str] = ("garbage",),
        seed: int = 0,
        out_of_range_content: str = '{"task": 9, "response": 7}',
        usage: tuple[int, int] = (100, 10),
        slow_s: float = 2.0,
        max_requests: int = 2000,
        lifetime_s: float = 600.0,
    ):
        for mode in (*plan, then, *faults):
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
        if plan and rate:
            raise ValueError("give a plan or a rate, not both")
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.upstream_path = parsed.path.rstrip("/")  # e.g. /v1
        self.plan, self.cycle, self.then = list(plan), cycle, then
        self.rate, self.faults, self.rng = rate, list(faults), random.Random(seed)
        self.out_of_range_content, self.usage = out_of_range_content, usage
        self.slow_s, self.max_requests, self.lifetime_s = slow_s, max_requests, lifetime_s
        self.counts: collections.Counter[str] = collections.Counter()
        self.served = 0
        self.keys_seen: set[str] = set()
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.proxy = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.timer = threading.Timer(lifetime_s, self.stop)
        self.timer.daemon = True

    # --- lifecycle
    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{self.upstream_path}"

    def start(self) -> FaultProxy:
        self.thread.start()
        self.timer.start()
        return self

    def stop(self) -> None:
        self.timer.cancel()
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the plan
    def next_mode(self) -> str:
        with self.lock:
            self.served += 1
            if self.served > self.max_requests:
                mode = "drop"
            elif self.plan:
                i = self.counts.total()
                if self.cycle:
                    mode = self.plan[i % len(self.plan)]
                else:
                    mode = self.plan[i] if i < len(self.plan) else self.then
            elif self.rate:
                mode = self.rng.choice(self.faults) if self.rng.random() < self.rate else "pass"
            else:
                mode = self.then
            self.counts[mode] += 1
            return mode

    def completion(self, content: str) -> bytes:
        return json.dumps(
            {
                "id": "chatcmpl-faultproxy",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "faultproxy",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": self.usage[0],
                    "completion_tokens": self.usage[1],
                    "total_tokens": sum(self.usage),
                },
            }
        ).encode()

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=300)
        try:
            sent = {
                k: v for k, v in headers.items() if k.lower() in ("content-type", "authorization")
            }
            conn.request(method, path, body=body or None, headers=sent)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", "application/json"), resp.read()
        finally:
            conn.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-reply (it was killed, or timed out): not our fault


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._pass(b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.endswith("/chat/completions"):
            self._pass(body)
            return
        proxy = self.server.proxy
        mode = proxy.next_mode()
        key = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        with proxy.lock:
            proxy.keys_seen.add(key)
        if mode == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "slow":
            time.sleep(proxy.slow_s)
            self._pass(body)
        elif mode == "pass":
            self._pass(body)
        elif mode == "garbage":
            self._reply(200, "application/json", GARBAGE)
        elif mode == "html":
            self._reply(200, "text/html; charset=utf-8", HTML)
        elif mode == "out_of_range":
            self._reply(200, "application/json", proxy.completion(proxy.out_of_range_content))
        elif mode == "empty":
            self._reply(200, "application/json", proxy.completion(""))
        elif mode in ("echo_401", "echo_400"):
            status = int(mode[-3:])
            message = (
                f"Incorrect API key provided: {key}"
                if status == 401
                else f"Invalid request (sent with key {key}): context length exceeded"
            )
            error = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
            self._reply(status, "application/json", json.dumps(error).encode())

    def _pass(self, body: bytes) -> None:
        status, ctype, data = self.server.proxy.forward(
            self.command, self.path, dict(self.headers.items()), body
        )
        self._reply(status, ctype, data)

    def _reply(self, status: int, ctype: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
