"""A bounded front for the status page's HTTP listeners, between the socket and aiohttp.

aiohttp parses whatever a connection sends and (3.8, Debian 12's) queues every pipelined
request without limit; a header block that never ends is buffered too. The page serves three
tiny GET paths, so this layer holds each connection to what such a page needs, whatever the
aiohttp version:

- reads go into a fixed buffer of `max_buffer` bytes (asyncio.BufferedProtocol); when it is
  full, the socket is not read until a request has been answered, so the kernel's receive
  window, not dvpnd's memory, holds what a client pipelines;
- aiohttp is handed one complete header block at a time, and the next only once the answer to
  the previous one is written: one request in flight per connection;
- a header block larger than `max_header` closes the connection; a request with a body (the
  page has no use for one) is the connection's last: aiohttp gets what is buffered of it, says
  405, and the connection is closed;
- a connection must send a whole request within `request_timeout` and read its answer within
  `response_timeout`; it is closed after `max_requests` requests;
- at most `max_connections` connections, and `max_per_source` from one address: past a cap
  the oldest connection that is waiting for a request makes room, or the new one is refused.
  A connection whose request is already in the kernel's receive queue, unread, is not waiting
  (a burst of accepts runs every `connection_made` before the first read: without this a
  client's fresh connection could be evicted, its request unread, by the idle ones accepted
  after it).
  Behind a proxy such as dstack-gateway every client has the proxy's address, so there the
  per-source cap is the page's real cap.
"""

from __future__ import annotations

import asyncio
import fcntl
import re
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:", re.IGNORECASE)
_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([^\r]*)\r\n", re.IGNORECASE)


def has_body(head: bytes) -> bool:
    """Whether a request's header block announces a body (any Transfer-Encoding, or a
    Content-Length that is not 0)."""
    if _CHUNKED.search(head):
        return True
    length = _LENGTH.search(head)
    return length is not None and length.group(1).strip() != b"0"


@dataclass(frozen=True)
class Limits:
    max_header: int = 4096
    max_buffer: int = 8192
    max_requests: int = 100
    request_timeout: float = 10.0
    response_timeout: float = 10.0
    max_connections: int = 256
    max_per_source: int = 64


class ConnectionTable:
    """The open connections of one or more listeners, for the caps and for finding the
    connection a request came in on."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.open: dict[Any, GuardedConnection] = {}  # aiohttp protocol -> its guard
        self.refused = 0
        self.evicted = 0
        self.closed_slow = 0
        self.closed_oversize = 0

    def live(self) -> list[GuardedConnection]:
        """The open connections that are not being closed: an evicted connection stays in
        `open` until the loop runs its connection_lost, and a burst of accepts runs many
        connection_made first; counting those would evict more and more, then refuse."""
        return [c for c in self.open.values() if not c.closing]

    def sources(self, source: str) -> list[GuardedConnection]:
        return [c for c in self.live() if c.source == source]

    def admit(self, conn: GuardedConnection) -> bool:
        """Make room for `conn` under both caps; False if it must be refused."""
        for scope, cap in ((self.sources(conn.source), self.limits.max_per_source),
                           (self.live(), self.limits.max_connections)):
            need = len(scope) - cap + 1
            if need <= 0:
                continue
            victims: list[GuardedConnection] = []
            # oldest first; the kernel is asked about unread bytes only until enough are found
            for c in sorted((c for c in scope if c.waiting), key=lambda c: c.since):
                if c.idle():
                    victims.append(c)
                    if len(victims) == need:
                        break
            if len(victims) < need:
                self.refused += 1
                return False
            for c in victims:
                self.evicted += 1
                c.close()
        return True

    def last_request(self, inner: Any) -> bool:
        """Whether the request in flight on `inner`'s connection is the last it may make."""
        conn = self.open.get(inner)
        return conn is None or conn.last or conn.requests >= self.limits.max_requests

    def done(self, inner: Any) -> None:
        """The answer to the request on `inner`'s connection is written (or failed)."""
        conn = self.open.get(inner)
        if conn is not None:
            conn.request_done()


class GuardedConnection(asyncio.BufferedProtocol):
    """One client connection: feeds aiohttp's protocol `inner` one request at a time."""

    def __init__(self, inner: asyncio.Protocol, table: ConnectionTable):
        self.inner = inner
        self.table = table
        self.limits = table.limits
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray(self.limits.max_buffer)
        self.used = 0
        self.transport: asyncio.Transport | None = None
        self.source = ""
        self.waiting = True  # no request in flight
        self.last = False  # a request with a body came: nothing more is read
        self.closing = False
        self.paused = False
        self.requests = 0
        self.since = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None

    # --- asyncio's side ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.table.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            self.closing = True
            return
        self.table.open[self.inner] = self
        self.inner.connection_made(transport)
        self._arm(self.limits.request_timeout)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)[self.used:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing:
            return
        self.used += nbytes
        self._pump()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if not self.closing else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._disarm()
        if self.table.open.pop(self.inner, None) is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # --- ours -------------------------------------------------------------------------

    def idle(self) -> bool:
        """Waiting for a request, and none is unread in the kernel: a candidate to evict."""
        return self.waiting and not self.closing and unread(self.transport) == 0

    def close(self) -> None:
        if self.closing or self.transport is None:
            return
        self.closing = True
        self._disarm()
        self.transport.abort()

    def request_done(self) -> None:
        if self.closing or self.waiting or self.last:
            return  # the last request's answer closes the connection (Connection: close)
        self.waiting = True
        self.since = self.loop.time()
        self._arm(self.limits.request_timeout)
        # the next pipelined request, if any, once aiohttp has written this answer
        self.loop.call_soon(self._pump)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, self._timeout)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timeout(self) -> None:
        self.timer = None
        self.table.closed_slow += 1
        self.close()

    def _pump(self) -> None:
        if self.closing or self.transport is None:
            return
        if not self.waiting:
            self._pause(self.used == len(self.buf))
            return
        if self.requests >= self.limits.max_requests:
            self.close()
            return
        view = bytes(self.buf[: self.used])
        end = view.find(b"\r\n\r\n")
        if end < 0:
            if self.used > self.limits.max_header:
                self.table.closed_oversize += 1
                self.close()
            else:
                self._pause(False)
            return
        end += 4
        if end > self.limits.max_header:
            self.table.closed_oversize += 1
            self.close()
            return
        head = view[:end]
        if has_body(head):
            # what is buffered of the body goes along; nothing more is read from this client
            self.last = True
            head, end = view, len(view)
        self.buf[: self.used - end] = view[end:]
        self.used -= end
        self.requests += 1
        self.waiting = False
        self._arm(self.limits.response_timeout)
        self._pause(self.last or self.used == len(self.buf))
        self.inner.data_received(head)

    def _pause(self, full: bool) -> None:
        assert self.transport is not None
        if full and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        elif not full and self.paused:
            self.paused = False
            self.transport.resume_reading()


def unread(transport: asyncio.BaseTransport | None) -> int:
    """Bytes in the socket's receive queue that nobody has read yet (FIONREAD); 0 when the
    transport has no socket."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return 0
    try:
        got = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", got)[0])


def protocol_factory(make_inner: Callable[[], asyncio.Protocol],
                     table: ConnectionTable) -> Callable[[], GuardedConnection]:
    """The factory for loop.create_server: aiohttp's protocol behind a guard."""
    return lambda: GuardedConnection(make_inner(), table)
