"""The hub's end of the TCP fallback: a TLS listener (TCP 443 by default) whose one path is a
WebSocket, each binary message one WireGuard datagram, relayed to the hub's own WireGuard port on
loopback through one UDP socket per spoke, so WireGuard sees each TCP spoke as an ordinary
endpoint (127.0.0.1:port) and roams to it like to any other.

What an Internet client meets, in order:
- at most `max_clients` connections and `max_per_ip` from one address (past a cap the connection
  is closed at once); the TLS handshake and the WebSocket upgrade must be done within 10 s;
- anything but a WebSocket upgrade on PATH: 404 or 400, and the connection closed;
- no compression (permessage-deflate is never negotiated, and a compressed frame is a protocol
  error): a decompression bomb has nothing to inflate;
- a challenge (a fresh nonce), and 5 s to prove possession of a spoke key this hub carries
  (protocol.verify); otherwise close code 4401;
- then binary messages only, each at most one datagram of the transit (larger: close 1009) and
  of WireGuard's shape (otherwise close 4400); no message for `idle` seconds: close 4408;
- datagrams for a spoke wait in a queue of `queue`; beyond it they are dropped, as UDP would,
  and a spoke that reads nothing for `stall` seconds is cut off: a client that reads nothing
  holds no more of the hub's memory than the queue and the socket buffers.
A spoke's UDP socket outlives its connection by `linger` seconds, so a reconnect keeps the
endpoint WireGuard knows; a second connection with the same key replaces the first."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from dvpnd.relay.config import HubSide
from dvpnd.relay.eager import Sender
from dvpnd.relay.protocol import (
    AUTH_TIMEOUT,
    NONCE_LEN,
    PATH,
    datagram_problem,
    parse_answer,
    parse_probe,
    probe_valid,
    render_challenge,
    render_probe_reply,
    verify,
)

log = logging.getLogger("dvpnd.relay")
UPGRADE_TIMEOUT = 10.0


@dataclass
class Stats:
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    to_wireguard: int = 0
    to_spokes: int = 0
    dropped: int = 0
    probes: int = 0


class _Session(asyncio.DatagramProtocol):
    """One spoke's socket towards WireGuard, and the connection that carries it now (if any)."""

    def __init__(self, relay: HubRelay, key: bytes) -> None:
        self.relay = relay
        self.key = key
        self.transport: asyncio.DatagramTransport | None = None
        self.ws: web.WebSocketResponse | None = None
        self.sender: Sender | None = None  # (the connection's)
        self.request: web.Request | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.heard = 0.0  # (loop time) the last message from the spoke
        self.closing: asyncio.Future[Any] | None = None  # the sweeper's close of an idle connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        cfg = self.relay.cfg
        if addr[1] != cfg.wg_port or self.sender is None:
            return
        if self.sender.send(data):
            self.relay.stats.to_spokes += 1
        else:
            self.relay.stats.dropped += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.transport = None


class _Guard(asyncio.Protocol):
    """Between the TLS layer and aiohttp, for one connection: counted against the caps from its
    accept (so that TLS handshakes too are bounded), a deadline for the handshake and the WebSocket
    upgrade together, and the count released however the connection ends."""

    def __init__(self, relay: HubRelay, inner: asyncio.Protocol, peer: str) -> None:
        self.relay = relay
        self.inner = inner
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.counted = True
        relay.guards[self] = None
        relay.per_ip[peer] += 1
        self.deadline: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(UPGRADE_TIMEOUT, self._late)

    async def open(self, conn: socket.socket, ctx: ssl.SSLContext) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: self, conn, ssl=ctx, ssl_handshake_timeout=UPGRADE_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            self.relay.stats.refused["TLS handshake failed"] += 1
            conn.close()
            self._release()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.relay.by_transport[transport] = self
        self.inner.connection_made(transport)

    def _late(self) -> None:
        self.deadline = None
        self.relay.stats.refused["no upgrade in time"] += 1
        self.abort()

    def upgraded(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _release(self) -> None:
        if not self.counted:
            return
        self.counted = False
        r = self.relay
        r.guards.pop(self, None)
        if self.transport is not None:
            r.by_transport.pop(self.transport, None)
        r.per_ip[self.peer] -= 1
        if r.per_ip[self.peer] <= 0:
            del r.per_ip[self.peer]
        self.upgraded()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self.transport = None
        self.inner.connection_lost(exc)


class _ProbeAnswerer(asyncio.DatagramProtocol):
    """Answers the UDP probes of spokes on `transport: auto` (see protocol.py), at most 20 a
    second from one address."""

    def __init__(self, relay: HubRelay) -> None:
        self.relay = relay
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: dict[str, tuple[float, int]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        probe = parse_probe(data)
        if probe is None or self.transport is None:
            return
        now = asyncio.get_running_loop().time()
        start, n = self.seen.get(addr[0], (now, 0))
        if now - start >= 1.0:
            start, n = now, 0
        if n >= 20:
            return
        if len(self.seen) > 4096:
            self.seen.clear()
        self.seen[addr[0]] = (start, n + 1)
        nonce, spoke, mac = probe
        key = self.relay.cfg.spokes.get(spoke)
        if key is None or not probe_valid(key, nonce, spoke, mac):
            self.relay.stats.refused["bad probe"] += 1
            return
        self.transport.sendto(render_probe_reply(key, nonce), addr)
        self.relay.stats.probes += 1


class HubRelay:
    def __init__(self, cfg: HubSide) -> None:
        self.cfg = cfg
        self.sessions: dict[bytes, _Session] = {}
        self.guards: dict[_Guard, None] = {}
        self.by_transport: dict[Any, _Guard] = {}
        self.per_ip: Counter[str] = Counter()
        self.stats = Stats()
        self._runner: web.AppRunner | None = None
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Future[None] | None = None
        self._probes: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.Future[None] | None = None

    def reconfigure(self, cfg: HubSide) -> None:
        """New settings (the roster or the peers changed): a spoke no longer carried is cut off."""
        self.cfg = cfg
        for key in [k for k in self.sessions if k not in cfg.spokes]:
            s = self.sessions.pop(key)
            if s.ws is not None:
                asyncio.ensure_future(s.ws.close(code=4403, message=b"no longer a member"))
            s.close()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(PATH, self.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cfg.cert, self.cfg.key)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.cfg.address else socket.AF_INET
        self._listener = socket.create_server((self.cfg.address, self.cfg.port), family=family, backlog=256)
        self._listener.setblocking(False)
        self._acceptor = asyncio.ensure_future(self._accept(self._listener, lambda: server(), ctx))
        self._sweeper = asyncio.ensure_future(self._sweep())
        self._probes, _ = await loop.create_datagram_endpoint(lambda: _ProbeAnswerer(self),
                                                              local_addr=(self.cfg.address, self.cfg.probe_port))
        log.info("relay listening on %s:%d (TLS, WebSocket %s; UDP probes on %d)", self.cfg.address, self.cfg.port,
                 PATH, self.cfg.probe_port)

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    async def _accept(self, listener: socket.socket, inner: Callable[[], asyncio.Protocol],
                      ctx: ssl.SSLContext) -> None:
        """Accepts connections itself, so that the caps apply before any TLS: past one, the
        connection is closed before its handshake."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(listener)
            except OSError as e:  # (out of descriptors, say: wait rather than spin)
                log.warning("relay: accept failed: %s", e)
                await asyncio.sleep(0.5)
                continue
            peer = str(addr[0])
            if len(self.guards) >= self.cfg.max_clients or self.per_ip[peer] >= self.cfg.max_per_ip:
                self.stats.refused["too many connections"] += 1
                conn.close()
                continue
            guard = _Guard(self, inner(), peer)
            asyncio.ensure_future(guard.open(conn, ctx))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._probes is not None:
            self._probes.close()
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        for g in list(self.guards):
            g.abort()
        for s in self.sessions.values():
            s.close()
        self.sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=self.cfg.largest, autoclose=True, autoping=True)
        if not ws.can_prepare(request).ok:
            self.stats.refused["not a WebSocket"] += 1
            return web.Response(status=400, text="WebSocket only\n", headers={"Connection": "close"})
        guard = self.by_transport.get(request.transport)
        await ws.prepare(request)
        if guard is not None:
            guard.upgraded()
        session = await self._authenticate(ws)
        if session is None:
            return ws
        self.stats.accepted += 1
        session.request = request
        session.heard = asyncio.get_running_loop().time()
        sender = session.sender
        try:
            await self._receive(session, ws)
        finally:
            if sender is not None:
                await sender.close()
            if session.ws is ws:
                session.ws = None
                session.sender = None
                session.expiry = asyncio.get_running_loop().call_later(self.cfg.linger, self._expire, session)
        return ws

    async def _authenticate(self, ws: web.WebSocketResponse) -> _Session | None:
        nonce = os.urandom(NONCE_LEN)
        await ws.send_str(render_challenge(nonce))
        try:
            msg = await ws.receive(timeout=AUTH_TIMEOUT)
        except TimeoutError:
            await self._refuse(ws, "no proof in time")
            return None
        if msg.type != WSMsgType.TEXT:
            await self._refuse(ws, "no proof")
            return None
        try:
            answer = parse_answer(msg.data)
        except ValueError:
            await self._refuse(ws, "malformed proof")
            return None
        if not verify(answer, nonce, self.cfg.hub_public, self.cfg.spokes):
            await self._refuse(ws, "wrong proof")
            return None
        session = self.sessions.get(answer.spoke_public)
        if session is None or session.transport is None:
            session = _Session(self, answer.spoke_public)
            await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: session, remote_addr=("127.0.0.1", self.cfg.wg_port))
            self.sessions[answer.spoke_public] = session
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        if session.ws is not None:
            log.info("relay: a new connection replaces the last one of the same spoke")
            asyncio.ensure_future(session.ws.close(code=4409, message=b"replaced"))
        session.ws = ws
        session.sender = Sender(ws.send_bytes, self.cfg.queue)
        await ws.send_str('{"ok": true}')
        return session

    async def _refuse(self, ws: web.WebSocketResponse, why: str) -> None:
        self.stats.refused[why] += 1
        await ws.close(code=4401, message=why.encode())

    async def _receive(self, session: _Session, ws: web.WebSocketResponse) -> None:
        # (no timeout per message, which costs a timer each: the sweeper closes idle spokes)
        loop = asyncio.get_running_loop()
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.BINARY:
                problem = datagram_problem(msg.data, self.cfg.largest)
                if problem is not None:
                    self.stats.refused["not WireGuard"] += 1
                    await ws.close(code=4400, message=b"not a WireGuard datagram")
                    return
                session.heard = loop.time()
                if session.transport is not None and session.ws is ws:
                    session.transport.sendto(msg.data)
                    self.stats.to_wireguard += 1
            elif msg.type == WSMsgType.TEXT:
                self.stats.refused["text after the proof"] += 1
                await ws.close(code=4400, message=b"binary only")
                return
            else:  # CLOSE, CLOSING, CLOSED, ERROR (a message too big is ERROR after aiohttp's 1009)
                if msg.type == WSMsgType.ERROR:
                    self.stats.refused["protocol error"] += 1
                if session.closing is not None:  # (the sweeper's close: its frame goes out before the handler ends)
                    await asyncio.gather(session.closing, return_exceptions=True)
                    session.closing = None
                return

    async def _sweep(self) -> None:
        """Once a second: close spokes that said nothing for `idle` seconds (4408), and cut off those
        that read nothing for `stall` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for session in list(self.sessions.values()):
                ws = session.ws
                if ws is None or ws.closed:
                    continue
                blocked = session.sender.blocked_since if session.sender is not None else None
                if blocked is not None and now - blocked >= self.cfg.stall:
                    self.stats.refused["not reading"] += 1
                    log.info("relay: a spoke read nothing for %.0fs; closing it", self.cfg.stall)
                    session.sender = None
                    if session.request is not None and session.request.transport is not None:
                        session.request.transport.abort()
                elif now - session.heard >= self.cfg.idle:
                    self.stats.refused["idle"] += 1
                    session.heard = now
                    session.closing = asyncio.ensure_future(ws.close(code=4408, message=b"idle"))

    def _expire(self, session: _Session) -> None:
        if session.ws is None and self.sessions.get(session.key) is session:
            del self.sessions[session.key]
            session.close()

    def view(self) -> dict[str, Any]:
        return {"connections": len(self.guards), "spokes": sum(1 for s in self.sessions.values() if s.ws is not None),
                "accepted": self.stats.accepted, "refused": dict(self.stats.refused),
                "to_wireguard": self.stats.to_wireguard, "to_spokes": self.stats.to_spokes,
                "dropped": self.stats.dropped, "probes": self.stats.probes}
