"""The resolver as dvpnd runs it: its names follow the verified roster in force (rebuilt when
its serial changes); `tend` (a task of its own, never the query path) looks its upstreams up
again every UPSTREAM_REFRESH seconds (DHCP or the operator may change them) and keeps
systemd-resolved routing the overlay's zones to it (dvpnd/dns/resolved.py); a listen address
it cannot bind is logged and shown in the status, not fatal: the overlay works without names."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from dvpnd.config.model import Config
from dvpnd.daemon.status import DnsView
from dvpnd.dns import resolved
from dvpnd.dns.names import Names, render_names, reverse_zone
from dvpnd.dns.server import Resolver
from dvpnd.dns.upstream import find_upstreams
from dvpnd.roster.model import Roster

log = logging.getLogger("dvpnd.dns")
UPSTREAM_REFRESH = 30.0
TEND_EVERY = 5.0


class DnsService:
    def __init__(self, config: Config, roster: Callable[[], Roster | None]) -> None:
        self.config = config
        self.roster = roster
        self._names: Names | None = None
        self._names_of: tuple[int, int] | None = None  # (id, serial) of the roster they came from
        self._upstreams: tuple[list[str], str] = ([], "not looked up yet")
        self._upstreams_at = -UPSTREAM_REFRESH
        self.problem: str | None = None  # the listen addresses could not be bound
        self.system = "off (dns.resolved)" if not config.dns.resolved else "not set yet"
        self._system_index: int | None = None  # the link index resolved was last set for
        d = config.dns
        self.resolver = Resolver(self.names, tuple(d.zone.split(".")), reverse_zone(config.network),
                                 self.upstreams, forwarding=d.forward, port=d.port)

    def names(self) -> Names | None:
        r = self.roster()
        key = None if r is None else (id(r), r.serial)
        if key != self._names_of:
            self._names = render_names(self.config.dns.zone, self.config.network, r)
            self._names_of = key
        return self._names

    def upstreams(self) -> list[str]:
        return self._upstreams[0]

    def refresh_upstreams(self) -> None:
        d = self.config.dns
        found = find_upstreams(d.upstream, d.listen, self.config.network)
        if found != self._upstreams:
            log.info("dns: names outside %s go to %s (from %s)", d.zone, ", ".join(found[0]) or "nobody", found[1])
        self._upstreams, self._upstreams_at = found, time.monotonic()

    async def tend(self, stopping: asyncio.Event) -> None:
        """Every TEND_EVERY seconds: the upstreams (every UPSTREAM_REFRESH), and resolved's
        settings for the overlay link when its index is new (made again, or first seen)."""
        while not stopping.is_set():
            if time.monotonic() - self._upstreams_at >= UPSTREAM_REFRESH:
                self.refresh_upstreams()
            if self.config.dns.resolved and self.problem is None:
                await self.tend_resolved()
            try:
                await asyncio.wait_for(stopping.wait(), TEND_EVERY)
            except TimeoutError:
                pass

    async def tend_resolved(self) -> None:
        link = self.config.wireguard.interface
        try:
            index = socket.if_nametoindex(link)
        except OSError:
            return  # not made yet
        if index == self._system_index:
            return
        why = resolved.available()
        retry = why is not None  # resolved may start after dvpnd: looked for again (no process started)
        if why is None:
            want = resolved.render_link_dns(self.config)
            why, retry = await resolved.apply_link_dns(want)
            if why is None:
                self.system = (f"systemd-resolved: {link} (index {index}) DNS {' '.join(want.servers)}, "
                               f"domains {' '.join(want.domains)}, default route off")
                log.info("dns: %s", self.system)
        if why is not None:
            now = f"not set in systemd-resolved: {why}"
            if now != self.system:
                log.info("dns: %s", now)
            self.system = now
        if not retry:
            self._system_index = index  # nothing to do until the link is made again

    async def start(self) -> None:
        d = self.config.dns
        try:
            await self.resolver.start(list(d.listen), d.port)
        except OSError as e:
            self.problem = f"cannot listen on {', '.join(d.listen)} port {d.port}: {e.strerror or e}"
            log.error("dns: %s; no names on this node", self.problem)
            await self.resolver.close()
        self.refresh_upstreams()

    async def close(self) -> None:
        await self.resolver.close()

    def view(self) -> DnsView:
        n = self.names()
        d = self.config.dns
        return DnsView(zone=d.zone, listen=d.listen, names=tuple(n.listing()) if n else (),
                       ready=n is not None, problem=self.problem, system=self.system,
                       upstreams=tuple(self._upstreams[0]), upstreams_from=self._upstreams[1],
                       answers={f"{k[0]} {k[1]}": v for k, v in sorted(self.resolver.counts.items())})
