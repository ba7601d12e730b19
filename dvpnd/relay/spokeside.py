"""A spoke's end of the TCP fallback: per hub reached over TCP, a UDP socket on loopback that
WireGuard's hub peer has as its endpoint (127.0.0.1:`local_port`), and a WebSocket to the hub's
relay that carries each datagram as one binary message, both ways.

Only datagrams from WireGuard's own port on 127.0.0.1 are taken, and only of WireGuard's shape.
The hub is authenticated by its certificate (a pinned SHA-256 fingerprint, or a CA and the URL's
host name); the spoke proves its key (protocol.py). A lost connection is made again with backoff
(0.5 s doubling to 10 s); meanwhile datagrams are dropped, as on a dead UDP path, and WireGuard
retries its handshakes itself. No compression is offered or accepted.

A link on `auto` also asks every second whether UDP reaches the hub's WireGuard port (an
authenticated probe to that port, answered by the hub's relay: protocol.py). It holds the
WebSocket open only while UDP fails, and for `udp_hold` + LINGER seconds after UDP works again
(dvpnd moves WireGuard back after `udp_hold`; the connection stays a while in case UDP fails
again). dvpnd reads the verdict from the relay's status file and moves WireGuard's endpoint."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from dvpnd.relay.config import Link
from dvpnd.relay.eager import Sender
from dvpnd.relay.protocol import (
    datagram_problem,
    parse_challenge,
    probe_reply_valid,
    proof,
    render_answer,
    render_probe,
)

log = logging.getLogger("dvpnd.relay")
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
CONNECT_TIMEOUT = 10.0
PROBE_EVERY = 1.0
UDP_FAILS_AFTER = 3.0  # seconds without an answer to the UDP probes
LINGER = 60.0
QUEUE = 256  # datagrams waiting behind a send that waits for the socket to drain


@dataclass
class LinkState:
    connected_since: float | None = None
    connects: int = 0
    failures: int = 0
    last_error: str | None = None
    sent: int = 0
    received: int = 0
    dropped: int = 0
    udp_last_ok: float | None = None  # monotonic
    udp_ok_since: float | None = None
    udp_failed_at: float | None = None  # the last time UDP was judged failing
    probes: int = 0


class _Local(asyncio.DatagramProtocol):
    def __init__(self, link: SpokeLink) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.link.from_wireguard(data, addr)


class _ProbeReplies(asyncio.DatagramProtocol):
    def __init__(self, link: SpokeLink) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.link.probe_reply(data)


class SpokeLink:
    def __init__(self, cfg: Link) -> None:
        self.cfg = cfg
        self.state = LinkState()
        self.started = time.monotonic()
        self.pending: dict[bytes, float] = {}
        self.probe_socket: asyncio.DatagramTransport | None = None
        self.prober: asyncio.Task[None] | None = None
        self.local: asyncio.DatagramTransport | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.sender: Sender | None = None  # (the connection's)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.local, _ = await loop.create_datagram_endpoint(lambda: _Local(self),
                                                            local_addr=("127.0.0.1", self.cfg.local_port))
        self.task = asyncio.ensure_future(self._run())
        if self.cfg.mode == "auto":
            self.probe_socket, _ = await loop.create_datagram_endpoint(lambda: _ProbeReplies(self),
                                                                       local_addr=("0.0.0.0", 0))
            self.prober = asyncio.ensure_future(self._probe_loop())

    async def close(self) -> None:
        for t in (self.task, self.prober):
            if t is not None:
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
        if self.local is not None:
            self.local.close()
        if self.probe_socket is not None:
            self.probe_socket.close()

    # --- auto: is UDP to the hub alive? ---------------------------------------------------

    def udp_failing(self, now: float) -> bool:
        last = self.state.udp_last_ok if self.state.udp_last_ok is not None else self.started
        return now - last > UDP_FAILS_AFTER

    def wants_websocket(self, now: float) -> bool:
        if self.cfg.mode == "tcp":
            return True
        s = self.state
        if self.udp_failing(now):
            return True
        return s.udp_failed_at is not None and (s.udp_ok_since is None
                                                 or now - s.udp_ok_since < self.cfg.udp_hold + LINGER)

    async def _probe_loop(self) -> None:
        while True:
            now = time.monotonic()
            if self.udp_failing(now):
                self.state.udp_ok_since = None
                self.state.udp_failed_at = now
            nonce = os.urandom(16)
            self.pending = {n: t for n, t in self.pending.items() if now - t < 10}
            self.pending[nonce] = now
            if self.probe_socket is not None and self.cfg.udp_endpoint:  # (None: not resolved yet)
                host, port = self.cfg.udp_endpoint.rsplit(":", 1)
                try:
                    self.probe_socket.sendto(render_probe(self.cfg.auth, self.cfg.spoke_public, nonce),
                                             (host.strip("[]"), int(port)))
                    self.state.probes += 1
                except OSError:
                    pass
            await asyncio.sleep(PROBE_EVERY)

    def probe_reply(self, data: bytes) -> None:
        nonce = data[4:20]
        if nonce not in self.pending or not probe_reply_valid(self.cfg.auth, nonce, data):
            return
        del self.pending[nonce]
        now = time.monotonic()
        self.state.udp_last_ok = now
        if self.state.udp_ok_since is None:
            self.state.udp_ok_since = now

    def from_wireguard(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.cfg.active or addr != ("127.0.0.1", self.cfg.wg_port) \
                or datagram_problem(data, self.cfg.largest) is not None:
            return
        if self.sender is not None and self.sender.send(data):
            self.state.sent += 1
        else:
            self.state.dropped += 1

    def _ssl(self) -> ssl.SSLContext | aiohttp.Fingerprint:
        if self.cfg.fingerprint:
            return aiohttp.Fingerprint(bytes.fromhex(self.cfg.fingerprint))
        ctx = ssl.create_default_context(cafile=self.cfg.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        async with aiohttp.ClientSession(auto_decompress=False,
                                         timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT)) as session:
            while True:
                while not self.wants_websocket(time.monotonic()):
                    backoff = BACKOFF_MIN
                    await asyncio.sleep(0.25)
                began = time.monotonic()
                try:
                    await self._connect_and_pump(session)
                    problem = "closed by the hub"
                    if not self.wants_websocket(time.monotonic()):
                        log.info("relay %s: UDP works again; WebSocket closed", self.cfg.name)
                        self.state.connected_since = None
                        continue
                except aiohttp.ServerFingerprintMismatch as e:
                    problem = (f"the hub's certificate is not the pinned one (its fingerprint is {e.got.hex()}, "
                               f"the pin {e.expected.hex()})")
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                    problem = str(e) or type(e).__name__
                self.state.connected_since = None
                self.state.failures += 1
                if problem != self.state.last_error:
                    log.warning("relay %s: %s; connecting again", self.cfg.name, problem)
                self.state.last_error = problem
                if time.monotonic() - began > 30:
                    backoff = BACKOFF_MIN
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connect_and_pump(self, session: aiohttp.ClientSession) -> None:
        # (aiohttp 3.8, Debian 12's, takes the close timeout as a float; later ones as ClientWSTimeout)
        kwargs: dict[str, Any] = {"timeout": aiohttp.ClientWSTimeout(ws_close=5.0)
                                  if hasattr(aiohttp, "ClientWSTimeout") else 5.0}
        async with session.ws_connect(self.cfg.url, ssl=self._ssl(), compress=0, max_msg_size=self.cfg.largest,
                                      autoping=True, heartbeat=None, receive_timeout=None,
                                      **kwargs) as ws:
            msg = await ws.receive(timeout=CONNECT_TIMEOUT)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ValueError(f"the hub's relay closed before its challenge ({ws.close_code})")
            nonce = parse_challenge(msg.data)
            await ws.send_str(render_answer(self.cfg.spoke_public,
                                            proof(self.cfg.auth, nonce, self.cfg.spoke_public, self.cfg.hub_public)))
            msg = await ws.receive(timeout=CONNECT_TIMEOUT)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ValueError(f"the hub's relay refused this spoke (close code {ws.close_code})")
            self.ws = ws
            self.state.connected_since = time.time()
            self.state.connects += 1
            self.state.last_error = None
            log.info("relay %s: connected to %s", self.cfg.name, self.cfg.url)
            self.sender = sender = Sender(ws.send_bytes, QUEUE)
            self._nudge()
            watcher = asyncio.ensure_future(self._close_when_unwanted(ws))
            try:
                async for m in ws:
                    if m.type != aiohttp.WSMsgType.BINARY:
                        break
                    # (a link dvpnd has moved off, kept open a while, delivers nothing: WireGuard
                    # would roam back to it)
                    if self.cfg.active and datagram_problem(m.data, self.cfg.largest) is None \
                            and self.local is not None:
                        self.local.sendto(m.data, ("127.0.0.1", self.cfg.wg_port))
                        self.state.received += 1
            finally:
                self.ws = None
                self.sender = None
                await sender.close()
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    def _nudge(self) -> None:
        """One empty datagram to the hub's address inside the tunnel (its discard port): WireGuard
        sends it through this new connection at once, so the hub's WireGuard learns the new path now
        (after a restart of the hub's relay its socket for this spoke is a new one) rather than at
        the next keepalive. The hub's firewall drops it after WireGuard."""
        if not self.cfg.active or self.cfg.nudge is None:
            return
        family = socket.AF_INET6 if ":" in self.cfg.nudge else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.sendto(b"", (self.cfg.nudge, 9))
        except OSError:
            pass

    async def _close_when_unwanted(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while self.wants_websocket(time.monotonic()):
            await asyncio.sleep(1.0)
        await ws.close()

    def view(self) -> dict[str, Any]:
        s = self.state
        now = time.monotonic()
        udp = {} if self.cfg.mode != "auto" else {
            "udp_ok": not self.udp_failing(now),
            "udp_ok_for": None if s.udp_ok_since is None else round(now - s.udp_ok_since, 1),
            "udp_probes": s.probes}
        return {"name": self.cfg.name, "mode": self.cfg.mode, "active": self.cfg.active, **udp,
                "url": self.cfg.url, "local_port": self.cfg.local_port,
                "connected": s.connected_since is not None, "connected_since": s.connected_since,
                "connects": s.connects, "failures": s.failures, "last_error": s.last_error,
                "sent": s.sent, "received": s.received, "dropped": s.dropped}
