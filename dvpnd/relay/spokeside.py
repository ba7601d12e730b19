"""A spoke's end of the TCP fallback: per hub reached over TCP, a UDP socket on loopback that
WireGuard's hub peer has as its endpoint (127.0.0.1:`local_port`), and a WebSocket to the hub's
relay that carries each datagram as one binary message, both ways.

Only datagrams from WireGuard's own port on 127.0.0.1 are taken, and only of WireGuard's shape.
The hub is authenticated by its certificate (a pinned SHA-256 fingerprint, or a CA and the URL's
host name); the spoke proves its key (protocol.py). A lost connection is made again with backoff
(0.5 s doubling to 10 s); meanwhile datagrams are dropped, as on a dead UDP path, and WireGuard
retries its handshakes itself. No compression is offered or accepted."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from dvpnd.relay.config import Link
from dvpnd.relay.protocol import datagram_problem, parse_challenge, proof, render_answer

log = logging.getLogger("dvpnd.relay")
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
CONNECT_TIMEOUT = 10.0


@dataclass
class LinkState:
    connected_since: float | None = None
    connects: int = 0
    failures: int = 0
    last_error: str | None = None
    sent: int = 0
    received: int = 0
    dropped: int = 0


class _Local(asyncio.DatagramProtocol):
    def __init__(self, link: SpokeLink) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.link.from_wireguard(data, addr)


class SpokeLink:
    def __init__(self, cfg: Link) -> None:
        self.cfg = cfg
        self.state = LinkState()
        self.local: asyncio.DatagramTransport | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.out: asyncio.Queue[bytes] = asyncio.Queue(maxsize=256)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.local, _ = await loop.create_datagram_endpoint(lambda: _Local(self),
                                                            local_addr=("127.0.0.1", self.cfg.local_port))
        self.task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.local is not None:
            self.local.close()

    def from_wireguard(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr != ("127.0.0.1", self.cfg.wg_port) or datagram_problem(data, self.cfg.largest) is not None:
            return
        try:
            self.out.put_nowait(data)
        except asyncio.QueueFull:
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
                began = time.monotonic()
                try:
                    await self._connect_and_pump(session)
                    problem = "closed by the hub"
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
            while not self.out.empty():  # what waited for a dead connection is stale
                self.out.get_nowait()
            sender = asyncio.ensure_future(self._send(ws))
            try:
                async for m in ws:
                    if m.type != aiohttp.WSMsgType.BINARY:
                        break
                    if datagram_problem(m.data, self.cfg.largest) is None and self.local is not None:
                        self.local.sendto(m.data, ("127.0.0.1", self.cfg.wg_port))
                        self.state.received += 1
            finally:
                self.ws = None
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            data = await self.out.get()
            await ws.send_bytes(data)
            self.state.sent += 1

    def view(self) -> dict[str, Any]:
        s = self.state
        return {"name": self.cfg.name, "url": self.cfg.url, "local_port": self.cfg.local_port,
                "connected": s.connected_since is not None, "connected_since": s.connected_since,
                "connects": s.connects, "failures": s.failures, "last_error": s.last_error,
                "sent": s.sent, "received": s.received, "dropped": s.dropped}
