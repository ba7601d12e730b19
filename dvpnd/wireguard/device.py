"""WireGuard device state: what the config wants (render_device), what the device has
(DeviceState, read by a backend), and the changes between them (diff_device).

All pure. The diff follows `wg syncconf`: peers present only on the device are removed,
changed peers get only the fields that changed (allowed IPs replaced as a set), new peers
are added; the peer list as a whole is never replaced, so unchanged peers keep their
sessions. A second diff after applying is empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import ip_network

from dvpnd.config.model import Config
from dvpnd.overlay.paths import PeerPaths


def normalize_cidr(text: str) -> str:
    return str(ip_network(text, strict=False))


@dataclass(frozen=True)
class PeerState:
    """A peer as the device reports it. Counters are informational, never diffed."""

    public_key: str
    allowed_ips: frozenset[str] = frozenset()
    endpoint: str | None = None
    persistent_keepalive: int = 0
    last_handshake: float | None = None  # seconds since the epoch, None if never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class DeviceState:
    private_key: str | None = field(default=None, repr=False)
    public_key: str | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: dict[str, PeerState] = field(default_factory=dict)


@dataclass(frozen=True)
class DesiredPeer:
    public_key: str
    name: str
    allowed_ips: frozenset[str]
    # None: the device learns the endpoint (a roaming spoke); do not touch it.
    endpoint: str | None = None
    persistent_keepalive: int = 0
    # Where the peer was last seen; set only while the device knows no endpoint (after a restart).
    endpoint_hint: str | None = None
    # Overlay peers: the endpoints the path selector may choose from (it owns them, not the diff).
    paths: PeerPaths | None = None


@dataclass(frozen=True)
class DesiredDevice:
    private_key: str = field(repr=False)
    listen_port: int | None  # None: any port the device picked
    peers: dict[str, DesiredPeer]


@dataclass(frozen=True)
class PeerChange:
    public_key: str
    remove: bool = False
    create: bool = False
    endpoint: str | None = None
    persistent_keepalive: int | None = None
    allowed_ips: frozenset[str] | None = None  # replace the peer's allowed IPs with these


@dataclass(frozen=True)
class DeviceChanges:
    private_key: str | None = field(default=None, repr=False)
    listen_port: int | None = None
    peers: tuple[PeerChange, ...] = ()

    def __bool__(self) -> bool:
        return self.private_key is not None or self.listen_port is not None or bool(self.peers)

    def summary(self) -> str:
        added = sum(1 for p in self.peers if p.create)
        removed = sum(1 for p in self.peers if p.remove)
        changed = len(self.peers) - added - removed
        parts = []
        if self.private_key is not None:
            parts.append("private key set")
        if self.listen_port is not None:
            parts.append(f"listen port {self.listen_port}")
        parts.append(f"{added} peers added, {changed} changed, {removed} removed")
        return ", ".join(parts)


def settled(changes: DeviceChanges, desired: DesiredDevice) -> DeviceChanges:
    """What still differs after a write, less the endpoints of peers whose paths the selector
    owns: WireGuard roams such an endpoint to wherever the peer's last packet came from, which
    may happen between the write and the read-back (a failback, the other end still on the
    other hub). The next pass chooses again; that is no failed write."""
    def roamed(c: PeerChange) -> bool:
        want = desired.peers.get(c.public_key)
        return (want is not None and want.paths is not None and not c.create and not c.remove
                and c.endpoint is not None and c.persistent_keepalive is None and c.allowed_ips is None)
    return DeviceChanges(changes.private_key, changes.listen_port, tuple(c for c in changes.peers if not roamed(c)))


def rotation_done(current: float | None, new: float | None) -> bool:
    """A rotating spoke uses its new key once that key has the newer handshake."""
    return new is not None and (current is None or new >= current)


def render_device(config: Config, private_key: str, hub_endpoint: str | None,
                  handshakes: Mapping[str, float | None] | None = None,
                  endpoint_hints: Mapping[str, str] | None = None) -> DesiredDevice:
    """The device the config asks for. `hub_endpoint` is the spoke's resolved `ip:port`;
    `handshakes` (key -> latest handshake) decides which key of a rotating spoke holds its address;
    `endpoint_hints` are the hub's remembered spoke endpoints.

    The hub keeps a keepalive towards spokes too: with a remembered endpoint, a hub that comes
    back from a reboot initiates the handshake at once instead of waiting for idle spokes."""
    peers: dict[str, DesiredPeer] = {}
    hs = handshakes or {}
    hints = endpoint_hints or {}
    keepalive = config.wireguard.persistent_keepalive
    if config.is_hub:
        for p in config.peers:
            own = p.host_route
            holder = p.public_key
            if p.next_public_key is not None:
                if rotation_done(hs.get(p.public_key), hs.get(p.next_public_key)):
                    holder = p.next_public_key
                # Both keys are peers while the spoke switches; only one can hold its address.
                for key in (p.public_key, p.next_public_key):
                    peers[key] = DesiredPeer(public_key=key, name=p.name,
                                             allowed_ips=own if key == holder else frozenset(),
                                             persistent_keepalive=keepalive, endpoint_hint=hints.get(key))
                continue
            peers[p.public_key] = DesiredPeer(public_key=p.public_key, name=p.name, allowed_ips=own,
                                              persistent_keepalive=keepalive,
                                              endpoint_hint=hints.get(p.public_key))
    else:
        assert config.hub is not None
        peers[config.hub.public_key] = DesiredPeer(
            public_key=config.hub.public_key,
            name="hub",
            # The whole overlay goes through the hub, which forwards between spokes.
            allowed_ips=frozenset({str(config.network)}),
            endpoint=hub_endpoint,
            persistent_keepalive=config.wireguard.persistent_keepalive,
        )
    return DesiredDevice(private_key=private_key, listen_port=config.wireguard.listen_port, peers=peers)


def diff_device(desired: DesiredDevice, actual: DeviceState) -> DeviceChanges:
    """What to write so that `actual` becomes `desired`; empty when they agree."""
    private_key = desired.private_key if desired.private_key != actual.private_key else None
    listen_port = None
    if desired.listen_port is not None and desired.listen_port != actual.listen_port:
        listen_port = desired.listen_port
    changes: list[PeerChange] = []
    for key in sorted(actual.peers):
        if key not in desired.peers:
            changes.append(PeerChange(public_key=key, remove=True))
    for key in sorted(desired.peers):
        want = desired.peers[key]
        have = actual.peers.get(key)
        if have is None:
            first = want.paths.choose(None) if want.paths is not None else None
            changes.append(PeerChange(
                public_key=key, create=True, endpoint=first or want.endpoint or want.endpoint_hint,
                persistent_keepalive=want.persistent_keepalive, allowed_ips=want.allowed_ips,
            ))
            continue
        if want.paths is not None:
            endpoint = want.paths.choose(have.endpoint)
        else:
            endpoint = want.endpoint if want.endpoint is not None and want.endpoint != have.endpoint else None
        if want.endpoint is None and have.endpoint is None and want.endpoint_hint is not None:
            endpoint = want.endpoint_hint
        keepalive = (want.persistent_keepalive
                     if want.persistent_keepalive != have.persistent_keepalive else None)
        allowed = want.allowed_ips if want.allowed_ips != have.allowed_ips else None
        if endpoint is not None or keepalive is not None or allowed is not None:
            changes.append(PeerChange(public_key=key, endpoint=endpoint,
                                      persistent_keepalive=keepalive, allowed_ips=allowed))
    return DeviceChanges(private_key=private_key, listen_port=listen_port, peers=tuple(changes))
