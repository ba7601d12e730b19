"""The overlay's resolver on the wire: UDP and TCP on each listen address (bound with
IP_FREEBIND, so the overlay address may come up after dvpnd starts), dnslib for every packet.

Bounds, so that a flood of any shape costs a fixed amount: a UDP datagram over 4096 bytes or
one that does not parse is dropped (counted as malformed, no reply, so no reflection);
at most MAX_INFLIGHT queries wait for the upstream at once (past it: SERVFAIL at once); at most
MAX_TCP TCP clients, each closed after TCP_IDLE seconds without a query or TCP_QUERIES queries.
A forwarded query goes out with a fresh random ID from a fresh socket (a random source port),
connected to the upstream, and only an answer with that ID and the same question is taken."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from dnslib import EDNS0, QTYPE, RCODE, DNSError, DNSRecord

from dvpnd.dns.answer import EDNS_PAYLOAD, Decision, decide, same_question, truncated, udp_limit
from dvpnd.dns.names import Names

log = logging.getLogger("dvpnd.dns")
MAX_UDP = 4096
MAX_INFLIGHT = 256
MAX_TCP = 64
TCP_IDLE = 10.0
TCP_QUERIES = 100
UPSTREAM_TIMEOUT = 2.0
IP_FREEBIND = 15  # (linux/in.h)


def _socket(kind: int, address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.resolver.on_udp(data, addr, self.transport)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, asked: DNSRecord, answer: asyncio.Future[DNSRecord]) -> None:
        self.asked = asked
        self.answer = answer

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            r = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, struct.error):
            return
        if r.header.qr and r.header.id == self.asked.header.id and same_question(r, self.asked) \
                and not self.answer.done():
            self.answer.set_result(r)


class Resolver:
    def __init__(self, names: Callable[[], Names | None], zone: tuple[str, ...], reverse: tuple[str, ...],
                 upstreams: Callable[[], list[str]], forwarding: bool = True, port: int = 53) -> None:
        self.names = names
        self.zone, self.reverse = zone, reverse
        self.upstreams = upstreams
        self.forwarding = forwarding
        self.port = port
        self.upstream_port = 53
        self.counts: Counter[tuple[str, str]] = Counter()  # (zone | forward | malformed, rcode)
        self.inflight = 0
        self.tcp_clients = 0
        self._transports: list[asyncio.BaseTransport] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, addresses: list[str], port: int) -> None:
        loop = asyncio.get_running_loop()
        for a in addresses:
            t, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=_socket(socket.SOCK_DGRAM, a, port))
            self._transports.append(t)
            server = await asyncio.start_server(self._tcp_client, sock=_socket(socket.SOCK_STREAM, a, port))
            self._servers.append(server)
        log.info("dns: answering on %s port %d (UDP and TCP)", ", ".join(addresses), port)

    async def close(self) -> None:
        for t in self._transports:
            t.close()
        for s in self._servers:
            s.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- one query ------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> DNSRecord | None:
        try:
            return DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, struct.error, UnicodeError):
            self.counts[("malformed", "-")] += 1
            return None

    def _decide(self, query: DNSRecord) -> Decision:
        d = decide(query, self.names(), self.zone, self.reverse, self.forwarding)
        if d.reply is not None:
            self.counts[("zone" if d.in_zone else "other", RCODE.get(d.reply.header.rcode))] += 1
        return d

    def on_udp(self, data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
        if len(data) > MAX_UDP:
            self.counts[("malformed", "-")] += 1
            return
        query = self._parse(data)
        if query is None:
            return
        d = self._decide(query)
        if d.kind == "reply" and d.reply is not None:
            self._send_udp(transport, d.reply, udp_limit(query), addr)
        elif d.kind == "forward":
            self._spawn(self._forward_udp(query, transport, addr))

    def _send_udp(self, transport: asyncio.DatagramTransport, reply: DNSRecord, limit: int,
                  addr: tuple[str, int]) -> None:
        wire = reply.pack()
        if len(wire) > limit:
            wire = truncated(reply).pack()
        transport.sendto(wire, addr)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_udp(self, query: DNSRecord, transport: asyncio.DatagramTransport,
                           addr: tuple[str, int]) -> None:
        reply = await self.forward(query, tcp=False)
        self._send_udp(transport, reply, udp_limit(query), addr)

    async def forward(self, query: DNSRecord, tcp: bool) -> DNSRecord:
        """The upstream's answer, with the client's ID; SERVFAIL when none answers in time, or
        when too many queries already wait."""
        if self.inflight >= MAX_INFLIGHT:
            return self._failed(query, "busy")
        self.inflight += 1
        try:
            for up in self.upstreams():
                asked = DNSRecord.parse(query.pack())
                asked.header.id = secrets.randbelow(65536)
                try:
                    got = await asyncio.wait_for(self._ask_tcp(up, asked) if tcp else self._ask_udp(up, asked),
                                                 UPSTREAM_TIMEOUT)
                except (OSError, TimeoutError, DNSError, ValueError, IndexError, struct.error,
                        asyncio.IncompleteReadError):
                    continue
                if got is None:
                    continue
                got.header.id = query.header.id
                self.counts[("forward", RCODE.get(got.header.rcode))] += 1
                return got
            return self._failed(query, "no upstream answered")
        finally:
            self.inflight -= 1

    def _failed(self, query: DNSRecord, why: str) -> DNSRecord:
        r = query.reply(ra=1, aa=0)
        r.header.rcode = RCODE.SERVFAIL
        r.ar = []
        if any(x.rtype == QTYPE.OPT for x in query.ar):  # (ours, as every answer: never the client's echoed)
            r.add_ar(EDNS0(udp_len=EDNS_PAYLOAD))
        self.counts[("forward", "SERVFAIL")] += 1
        return r

    async def _ask_udp(self, up: str, asked: DNSRecord) -> DNSRecord | None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[DNSRecord] = loop.create_future()
        t, _ = await loop.create_datagram_endpoint(lambda: _Upstream(asked, answer),
                                                   remote_addr=(up, self.upstream_port))
        try:
            t.sendto(asked.pack())
            return await answer
        finally:
            t.close()

    async def _ask_tcp(self, up: str, asked: DNSRecord) -> DNSRecord | None:
        reader, writer = await asyncio.open_connection(up, self.upstream_port)
        try:
            wire = asked.pack()
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            r = DNSRecord.parse(await reader.readexactly(n))
            ok = r.header.qr and r.header.id == asked.header.id and same_question(r, asked)
            return r if ok else None
        finally:
            writer.close()

    # --- TCP clients ----------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.tcp_clients >= MAX_TCP:
            writer.close()
            return
        self.tcp_clients += 1
        try:
            for _ in range(TCP_QUERIES):
                try:
                    (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE))
                    data = await asyncio.wait_for(reader.readexactly(n), TCP_IDLE)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                query = self._parse(data)
                if query is None:
                    return
                d = self._decide(query)
                if d.kind == "drop":
                    return
                reply = d.reply if d.reply is not None else await self.forward(query, tcp=True)
                wire = reply.pack()
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.tcp_clients -= 1
            writer.close()
