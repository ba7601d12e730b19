"""What the node looks like now, as served by /status, /metrics and `dvpnctl status`.

A background task builds a Snapshot about once a second; HTTP handlers and the control
socket only read the latest one, so no request waits on netlink, the UAPI socket or a
subprocess. The functions here are pure: they turn a device reading into what is shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dvpnd.config import Config
from dvpnd.wgstate import DeviceState

VERSION = "0.1.0"


@dataclass(frozen=True)
class PeerView:
    name: str
    public_key: str
    overlay_ip: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int

    def age(self, now: float) -> int | None:
        return None if self.last_handshake is None else max(0, int(now - self.last_handshake))

    def state(self, now: float, stale_after: int) -> str:
        age = self.age(now)
        if age is None:
            return "never"
        return "up" if age <= stale_after else "stale"


@dataclass(frozen=True)
class Snapshot:
    taken: float  # time.time() of the reading
    node: str
    role: str
    interface: str
    overlay_ip: str
    backend: str
    interface_up: bool
    peers: tuple[PeerView, ...] = ()
    disk_free_bytes: int = 0
    ready: bool = False
    reconcile_error: str | None = None
    firewall_error: str | None = None
    firewall_applied: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def state(self, stale_after: int, now: float) -> str:
        """ok / degraded / failed, judged at `now` like the peers shown beside it."""
        if not self.interface_up or (self.reconcile_error and not self.ready):
            return "failed"
        if self.reconcile_error or self.firewall_error:
            return "degraded"
        if any(p.state(now, stale_after) != "up" for p in self.peers):
            return "degraded"
        return "ok"


def peer_views(config: Config, device: DeviceState) -> tuple[PeerView, ...]:
    names: dict[str, tuple[str, str]] = {}
    if config.is_hub:
        names = {p.public_key: (p.name, str(p.address)) for p in config.peers}
        names.update({p.next_public_key: (p.name, str(p.address)) for p in config.peers if p.next_public_key})
    elif config.hub is not None:
        names = {config.hub.public_key: ("hub", str(config.hub_address))}
    views = []
    for key, p in sorted(device.peers.items(), key=lambda kv: names.get(kv[0], ("~", ""))):
        name, ip = names.get(key, ("(unknown)", ""))
        views.append(PeerView(name=name, public_key=key, overlay_ip=ip,
                              allowed_ips=tuple(sorted(p.allowed_ips)), endpoint=p.endpoint,
                              last_handshake=p.last_handshake, rx_bytes=p.rx_bytes, tx_bytes=p.tx_bytes))
    return tuple(views)


def rfc3339_ms(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t * 1000) % 1000:03d}Z"


def render_status(snap: Snapshot, now: float, stale_after: int) -> dict[str, Any]:
    """The public status JSON: the seed's fields first, then public-safe extras.

    Nothing secret or network-mapping: no keys, no endpoints, no other nodes' addresses.
    """
    ages = [a for a in (p.age(now) for p in snap.peers) if a is not None]
    return {
        "node": snap.node,
        "overlay_ip": snap.overlay_ip,
        "wg": {
            "interface": snap.interface,
            "peer_count": len(snap.peers),
            "max_last_handshake_sec": max(ages) if ages else -1,
        },
        "disk_free_gb": round(snap.disk_free_bytes / 1e9, 1),
        "time": rfc3339_ms(now),
        "role": snap.role,
        "state": snap.state(stale_after, now),
        "peers_up": sum(1 for p in snap.peers if p.state(now, stale_after) == "up"),
        "version": VERSION,
    }


def render_detail(snap: Snapshot, now: float, stale_after: int) -> dict[str, Any]:
    """The root-only view for `dvpnctl status --json`: every peer with its endpoint and counters."""
    return {
        "node": snap.node,
        "role": snap.role,
        "state": snap.state(stale_after, now),
        "interface": snap.interface,
        "interface_up": snap.interface_up,
        "backend": snap.backend,
        "overlay_ip": snap.overlay_ip,
        "ready": snap.ready,
        "reconcile_error": snap.reconcile_error,
        "firewall": {"applied": snap.firewall_applied, "error": snap.firewall_error},
        "snapshot_age_sec": round(max(0.0, now - snap.taken), 1),
        "counters": dict(snap.extra),
        "peers": [
            {
                "name": p.name,
                "public_key": p.public_key,
                "overlay_ip": p.overlay_ip,
                "allowed_ips": list(p.allowed_ips),
                "endpoint": p.endpoint,
                "handshake_age_sec": p.age(now),
                "rx_bytes": p.rx_bytes,
                "tx_bytes": p.tx_bytes,
                "state": p.state(now, stale_after),
            }
            for p in snap.peers
        ],
    }
