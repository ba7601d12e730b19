"""The resolver as dvpnd runs it: its names follow the verified roster in force (rebuilt when
its serial changes), its upstreams are looked up again every UPSTREAM_REFRESH seconds (DHCP or
the operator may change them), and a listen address it cannot bind is logged, not fatal: the
overlay works without names."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dvpnd.config.model import Config
from dvpnd.daemon.status import DnsView
from dvpnd.dns.names import Names, render_names, reverse_zone
from dvpnd.dns.server import Resolver
from dvpnd.dns.upstream import find_upstreams
from dvpnd.roster.model import Roster

log = logging.getLogger("dvpnd.dns")
UPSTREAM_REFRESH = 30.0


class DnsService:
    def __init__(self, config: Config, roster: Callable[[], Roster | None]) -> None:
        self.config = config
        self.roster = roster
        self._names: Names | None = None
        self._names_of: tuple[int, int] | None = None  # (id, serial) of the roster they came from
        self._upstreams: tuple[list[str], str] = ([], "not looked up yet")
        self._upstreams_at = -UPSTREAM_REFRESH
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
        now = time.monotonic()
        if now - self._upstreams_at >= UPSTREAM_REFRESH:
            d = self.config.dns
            found = find_upstreams(d.upstream, d.listen, self.config.network)
            if found != self._upstreams:
                log.info("dns: names outside %s go to %s (from %s)", d.zone, ", ".join(found[0]) or "nobody",
                         found[1])
            self._upstreams, self._upstreams_at = found, now
        return self._upstreams[0]

    async def start(self) -> None:
        d = self.config.dns
        try:
            await self.resolver.start(list(d.listen), d.port)
        except OSError as e:
            log.error("dns: cannot listen on %s port %d: %s; no names on this node", ", ".join(d.listen), d.port, e)
            await self.resolver.close()
        self.upstreams()

    async def close(self) -> None:
        await self.resolver.close()

    def view(self) -> DnsView:
        n = self.names()
        d = self.config.dns
        return DnsView(zone=d.zone, listen=d.listen, names=tuple(n.listing()) if n else (), ready=n is not None,
                       upstreams=tuple(self._upstreams[0]), upstreams_from=self._upstreams[1],
                       answers={f"{k[0]} {k[1]}": v for k, v in sorted(self.resolver.counts.items())})
