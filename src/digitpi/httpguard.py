"""What stands between the network and `digitpi serve`'s app: limits on connections, time and size,
the Host check, HEAD.

A Raspberry Pi left serving on a network meets careless and hostile clients. uvicorn closes a
connection that idles *between* requests (`timeout_keep_alive`), but not one that never finishes
its request line and headers: 1,000 idle sockets, or 300 that send a byte now and then (slowloris),
would hold a Pi's 1,024 file descriptors. So:
- `guarded_protocol`: uvicorn's h11 protocol with a deadline for each request's headers and a cap
  on open connections (a new one closes the connection idle the longest);
- `BodyLimit`: a body larger than the limit (413) or slower than the deadline (408) is refused
  while it arrives, never held whole in memory;
- `HostCheck`: a browser on a page of another site can reach this server through DNS rebinding, a
  name of the attacker's that resolves to the Pi; such requests carry that name in Host, and get 400;
- `HeadAsGet`: HEAD is answered wherever GET is (monitors and `curl -I` use it).
Every refusal is a JSON `{"error": ...}`, as the app's own errors are.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections.abc import Iterable

import h11
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class ApiError(Exception):
    """A client mistake: answered as `{"error": message}` with `status`, the server carries on."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def send_error(send, status: int, message: str) -> None:
    response = JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"})
    await response({"type": "http"}, None, send)


def raw_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response, for refusals made before any request is read."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


# ---------------------------------------------------------------- connections


def guarded_protocol(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request line and headers have not all
    arrived `header_timeout` seconds after they could begin (connection or previous answer), and
    keeping at most `max_connections` open: a new connection over the cap closes the one idle the
    longest (no request under way: a client sends its request as soon as it connects, so the
    oldest idle ones are the hostile or the forgotten); if every one is busy, the new one gets a 503."""
    full = raw_error(503, "Service Unavailable", f"too many connections (over {max_connections}): try again")

    class GuardedH11(H11Protocol):
        deadline: asyncio.TimerHandle | None = None
        idle_since = 0.0  # loop time the connection last began to wait for a request

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.idle_since = self.loop.time()
            if sum(not c.transport.is_closing() for c in self.connections) > max_connections:
                idle = [c for c in self.connections if c is not self and isinstance(c, GuardedH11) and c.idle()]
                if not idle:
                    transport.write(full)
                    transport.close()
                    return
                min(idle, key=lambda c: c.idle_since).transport.close()
            self.watch_headers()

        def idle(self) -> bool:
            """Open, and no request under way (none yet, or only part of its headers)."""
            return (self.conn.their_state is h11.IDLE and not self.transport.is_closing()
                    and (self.cycle is None or self.cycle.response_complete))

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.watch_headers()

        def on_response_complete(self) -> None:
            self.idle_since = self.loop.time()
            super().on_response_complete()
            self.watch_headers()  # uvicorn's keep-alive timer takes over; it stops when data comes

        def connection_lost(self, exc) -> None:
            self.stop_watching()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            """A request h11 cannot parse (a Content-Length of -1, a garbled request line), answered in
            JSON as every other refusal is, not uvicorn's plain text."""
            self.transport.write(raw_error(400, "Bad Request", msg))
            self.transport.close()

        def watch_headers(self) -> None:
            """Start the header clock when the connection waits for a request that has begun (or for
            its first); stop it once the request's headers are in."""
            waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
            if waiting and self.deadline is None and self.timeout_keep_alive_task is None:
                self.deadline = self.loop.call_later(header_timeout, self.headers_too_slow)
            elif not waiting:
                self.stop_watching()

        def stop_watching(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def headers_too_slow(self) -> None:
            self.deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11


# ---------------------------------------------------------------- requests


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413, from Content-Length when it is
    sent, else by counting chunks as they arrive; and bodies still arriving `timeout` seconds after
    the request began with 408. The app never sees more than `limit` bytes."""

    def __init__(self, app, limit: int, timeout: float):
        self.app, self.limit, self.timeout = app, limit, timeout
        self.message = f"body larger than {limit // 1024} KiB: send a smaller image"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await send_error(send, 413, self.message)
        received = 0
        complete = started = False
        deadline = time.monotonic() + self.timeout

        async def guarded_receive():
            nonlocal received, complete
            if complete:  # after the body: only a disconnect can come, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise ApiError(408, f"the body did not arrive within {self.timeout:.0f} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.limit:
                    raise ApiError(413, self.message)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except ApiError as e:  # raised where the app's handlers do not reach (they answer the rest)
            if started:
                raise
            await send_error(send, e.status, e.message)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def default_hosts(bind: str) -> list[str]:
    """The names a browser may use for a server bound to `bind`: localhost always; when it listens
    beyond this machine, the machine's own name too (raspberrypi, raspberrypi.local, its FQDN)."""
    names = list(LOCAL_NAMES)
    if bind not in LOCAL_NAMES and not (is_ip(bind) and ipaddress.ip_address(bind).is_loopback):
        name = socket.gethostname().lower()
        names += [name, f"{name}.local", socket.getfqdn().lower()]
    return list(dict.fromkeys(names))


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether a Host header (port stripped) names this server. An IP address always does: DNS
    rebinding needs a name. `*` allows any name, `*.example.org` any name under example.org."""
    if not host or is_ip(host):
        return True
    for pattern in allowed:
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def host_of(header: bytes) -> str:
    """The host of a Host header, without its port: `[::1]:8000` -> `::1`, `pi.local:8000` -> `pi.local`."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class HostCheck:
    """ASGI middleware: 400 for a request whose Host header names another server."""

    def __init__(self, app, allowed: Iterable[str]):
        self.app, self.allowed = app, [a.lower() for a in allowed]

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = host_of(dict(scope["headers"]).get(b"host", b""))
            if not host_allowed(host, self.allowed):
                return await send_error(send, 400, f"Host {host!r} is not a name of this server; "
                                                   f"start it with --allowed-hosts {host} to allow it")
        await self.app(scope, receive, send)


class HeadAsGet:
    """ASGI middleware: HEAD runs the GET route and sends its headers without the body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
