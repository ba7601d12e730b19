"""What the overlay's resolver answers for (pure): the names of the verified roster.

`NAME.ZONE` -> the member's overlay address (and `ALIAS.ZONE` for each of its signed aliases,
such as `pg-a`), and the reverse zone of the overlay prefix
(`11.0.88.10.in-addr.arpa` -> `NAME.ZONE`). Nothing else: a name the roster does not sign is
not the overlay's. (A service name such as `primary.pg.ZONE` would have to come from signed,
agreed state; the PostgreSQL primary is each spoke's own config, and two spokes answering it
differently during a failover would be a split brain, so there is none.)"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from dvpnd.roster.model import Roster


def _labels(name: str) -> tuple[str, ...]:
    return tuple(x for x in name.lower().rstrip(".").split(".") if x)


def reverse_zone(network: IPv4Network) -> tuple[str, ...]:
    """The in-addr.arpa zone that holds the network (its whole octets: 10.88.0.0/24 ->
    0.88.10.in-addr.arpa; a prefix between octets takes the octet above it)."""
    octets = str(network.network_address).split(".")[: network.prefixlen // 8]
    return (*reversed(octets), "in-addr", "arpa")


def reverse_name(address: IPv4Address) -> tuple[str, ...]:
    return (*reversed(str(address).split(".")), "in-addr", "arpa")


@dataclass(frozen=True)
class Names:
    zone: tuple[str, ...]  # labels, lower case: ("dvpn", "internal")
    reverse: tuple[str, ...]  # ("0", "88", "10", "in-addr", "arpa")
    network: IPv4Network
    forward: dict[tuple[str, ...], IPv4Address]  # full name's labels -> address
    backward: dict[tuple[str, ...], tuple[str, ...]]  # reverse name's labels -> full name's labels
    serial: int  # the roster's (the zone's SOA serial)

    def in_zone(self, labels: tuple[str, ...]) -> bool:
        return _under(labels, self.zone) or _under(labels, self.reverse)

    def listing(self) -> list[tuple[str, str]]:
        """(name, address) pairs, as `dvpnctl dns` prints them."""
        return sorted((".".join(k), str(v)) for k, v in self.forward.items())


def _under(labels: tuple[str, ...], zone: tuple[str, ...]) -> bool:
    return len(labels) >= len(zone) and labels[len(labels) - len(zone):] == zone


def render_names(zone: str, network: IPv4Network, roster: Roster | None,
                 extra: Iterable[tuple[str, IPv4Address]] = ()) -> Names | None:
    """The table for a roster; None before the first verified roster (the resolver then answers
    SERVFAIL for its zones: not NXDOMAIN, which a client would cache as "no such name")."""
    if roster is None:
        return None
    z = _labels(zone)
    forward: dict[tuple[str, ...], IPv4Address] = {}
    backward: dict[tuple[str, ...], tuple[str, ...]] = {}
    for name, address in [*((m.name, m.address) for m in roster.members), *extra]:
        full = (*_labels(name), *z)
        forward[full] = address
        if address in network:
            backward[reverse_name(address)] = full
    for m in roster.members:  # aliases: forward only (the reverse names the member)
        for a in m.aliases:
            forward.setdefault((*_labels(a), *z), m.address)
    return Names(zone=z, reverse=reverse_zone(network), network=network, forward=forward, backward=backward,
                 serial=roster.serial)


def labels_of(name: str) -> tuple[str, ...]:
    return _labels(name)
