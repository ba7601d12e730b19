"""What the node looks like now, as served by /status, /metrics and `dvpnctl status`.

A background task builds a Snapshot about once a second; HTTP handlers and the control
socket only read the latest one, so no request waits on netlink, the UAPI socket or a
subprocess. The functions here are pure: they turn a device reading into what is shown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dvpnd import __version__
from dvpnd.config.model import Config
from dvpnd.wireguard.device import DeviceState

if TYPE_CHECKING:
    from dvpnd.postgres.pgbr_status import RepoView
    from dvpnd.postgres.state import PgView

VERSION = __version__  # shown on the page and in dvpnd_build


@dataclass(frozen=True)
class BackRestView:
    """The backups (pgBackRest), as the snapshot carries it (see postgres/pgbr_supervisor.py)."""

    stanza: str
    running: str | None
    repos: tuple[RepoView, ...]
    offsite_behind: int | None  # WAL segments the offsite repository is behind the local one
    wal_bytes: int
    wal_waiting: int  # segments in pg_wal waiting to be archived
    last_ok: tuple[tuple[str, float], ...]  # (operation, when it last succeeded)
    problems: tuple[str, ...]
    primary: bool  # only the primary backs up; a replica's view says so
    overdue_after: int  # seconds: twice the differential interval
    since: float  # when dvpnd began looking after backups (overdue counts from here until the first)
    drill_databases: int | None = None  # databases the last restore drill's server answered with

    @property
    def last_success(self) -> float | None:
        """The newest backup (full or differential) in the local repository."""
        local = next((r for r in self.repos if r.key == 1), None)
        return local.last_diff if local is not None else None

    def overdue(self, now: float) -> bool:
        last = self.last_success
        return self.primary and now - (last if last is not None else self.since) > self.overdue_after


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
    interface: str = ""
    # An overlay peer (another spoke, confidential mode) has no keepalive: without traffic it is
    # idle, not failing; the transit to the hub is what health is judged by.
    on_demand: bool = False

    def age(self, now: float) -> int | None:
        return None if self.last_handshake is None else max(0, int(now - self.last_handshake))

    def state(self, now: float, stale_after: int) -> str:
        age = self.age(now)
        if age is None:
            return "idle" if self.on_demand else "never"
        if age <= stale_after:
            return "up"
        return "idle" if self.on_demand else "stale"


@dataclass(frozen=True)
class RosterView:
    """The roster in force on this node (confidential mode) and what was refused."""

    serial: int | None
    issued: int | None
    expires: int | None
    members: int
    membership_problem: str | None
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count
    last_refusal: str | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True)
class HubView:
    """One of a spoke's hubs (more than one hub): whether probes through it are answered."""

    name: str
    public_key: str
    up: bool
    in_use: bool
    probes: int
    answers: int
    last_answer_age: float | None


@dataclass(frozen=True)
class TransportView:
    """How a spoke reaches one hub: udp, or tcp through its relay (and how that link is doing)."""

    hub: str
    transport: str  # what the tunnel goes over now: udp or tcp
    connected: bool | None = None  # the relay's WebSocket is up (None: the relay is not running)
    since: float | None = None  # connected since (time.time())
    connects: int = 0
    last_error: str | None = None
    mode: str = "udp"  # the config's: udp, tcp or auto
    switches: int = 0  # auto: moves between udp and tcp
    on_since: float | None = None  # auto: on this transport since (time.time())
    udp_ok: bool | None = None  # auto: the relay's UDP probes are answered


@dataclass(frozen=True)
class RelayView:
    """A hub's relay: the spokes it carries over TCP now, and what it refused."""

    running: bool
    connections: int = 0
    spokes: int = 0
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    dropped: int = 0


@dataclass(frozen=True)
class DnsView:
    """The overlay's resolver: what it answers for, where the rest goes, how it answered."""

    zone: str
    listen: tuple[str, ...]
    names: tuple[tuple[str, str], ...]  # (name, address); empty before the first roster
    ready: bool  # a verified roster is in (before it: SERVFAIL for the zone)
    upstreams: tuple[str, ...]
    upstreams_from: str
    answers: dict[str, int] = field(default_factory=dict)  # "zone NOERROR", "forward SERVFAIL", ...
    problem: str | None = None  # why it does not answer at all (its port could not be bound)
    system: str = ""  # how the machine's resolver routes the zones here (systemd-resolved), or why not


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
    postgres: PgView | None = None  # spokes with a database
    pgbackrest: BackRestView | None = None  # backups (pgBackRest)
    mode: str = "routed"
    roster: RosterView | None = None  # confidential mode
    hubs: tuple[HubView, ...] = ()  # a spoke with more than one hub
    failovers: int = 0
    transports: tuple[TransportView, ...] = ()  # a spoke: per hub
    relay: RelayView | None = None  # a hub with relay.enabled
    dns: DnsView | None = None  # dns.enabled

    def wg_peers(self) -> tuple[PeerView, ...]:
        """The peers of the node's own interface (on a confidential spoke: the other spokes)."""
        return tuple(p for p in self.peers if p.interface in ("", self.interface))

    def state(self, stale_after: int, now: float) -> str:
        """ok / degraded / failed, judged at `now` like the peers shown beside it."""
        if not self.interface_up or (self.reconcile_error and not self.ready):
            return "failed"
        return "degraded" if self.problems(stale_after, now) else "ok"

    def problems(self, stale_after: int, now: float) -> list[str]:
        """Why the node is degraded (empty when it is ok)."""
        out = []
        if self.reconcile_error:
            out.append(f"reconcile: {self.reconcile_error}")
        if self.firewall_error:
            out.append(f"firewall: {self.firewall_error}")
        out += [f"peer {p.name} {p.state(now, stale_after)}" for p in self.peers
                if p.state(now, stale_after) not in ("up", "idle")]
        r = self.roster
        if r is not None:
            if r.serial is None:
                out.append("no verified roster yet")
            elif r.expired(now):
                out.append(f"roster serial {r.serial} expired (still in force; ask the operator to renew it)")
            if r.membership_problem and self.role == "spoke":
                out.append(f"not a member: {r.membership_problem}")
        out += [f"hub {h.name}: no answer through it for {h.last_answer_age}s" for h in self.hubs if not h.up]
        out += [f"hub {t.hub}: the TCP relay is {'not running' if t.connected is None else 'not connected'}"
                + (f" ({t.last_error})" if t.last_error else "") for t in self.transports
                if t.transport == "tcp" and not t.connected]
        if self.relay is not None and not self.relay.running:
            out.append("relay: dvpn-relay is not running")
        if self.dns is not None and self.dns.problem:
            out.append(f"dns: {self.dns.problem}")
        pgv = self.postgres
        if pgv is not None:
            if not pgv.up:
                out.append("postgres down")
            elif pgv.role == "replica" and pgv.receiver_status != "streaming":
                out.append(f"postgres replica not streaming ({pgv.receiver_status or 'no receiver'})")
        if self.pgbackrest is not None:
            out += [f"backup: {p}" for p in self.pgbackrest.problems]
        return out


def routed_names(config: Config) -> dict[str, tuple[str, str]]:
    """Public key -> (name, overlay address) of the peers a routed node knows from its config."""
    names: dict[str, tuple[str, str]] = {}
    if config.is_hub:
        names = {p.public_key: (p.name, str(p.address)) for p in config.peers}
        names.update({p.next_public_key: (p.name, str(p.address)) for p in config.peers if p.next_public_key})
    elif config.hub is not None:
        names = {config.hub.public_key: ("hub", str(config.hub_address))}
    return names


def peer_views(config: Config, device: DeviceState, names: dict[str, tuple[str, str]] | None = None,
               interface: str = "", on_demand: bool = False) -> tuple[PeerView, ...]:
    names = routed_names(config) if names is None else names
    views = []
    for key, p in sorted(device.peers.items(), key=lambda kv: names.get(kv[0], ("~", ""))):
        name, ip = names.get(key, ("(unknown)", ""))
        views.append(PeerView(name=name, public_key=key, overlay_ip=ip,
                              allowed_ips=tuple(sorted(p.allowed_ips)), endpoint=p.endpoint,
                              last_handshake=p.last_handshake, rx_bytes=p.rx_bytes, tx_bytes=p.tx_bytes,
                              interface=interface, on_demand=on_demand))
    return tuple(views)


def rfc3339_ms(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t * 1000) % 1000:03d}Z"


def render_status(snap: Snapshot, now: float, stale_after: int) -> dict[str, Any]:
    """The public status JSON: the seed's fields first, then public-safe extras.

    Nothing secret or network-mapping: no keys, no endpoints, no other nodes' addresses.
    """
    wg_peers = snap.wg_peers()
    ages = [a for a in (p.age(now) for p in wg_peers) if a is not None]
    extra: dict[str, Any] = {"mode": snap.mode}
    if snap.roster is not None:
        extra["roster_serial"] = snap.roster.serial
    if snap.hubs:
        extra["hubs_up"] = sum(1 for h in snap.hubs if h.up)
        extra["hub_in_use"] = next((h.name for h in snap.hubs if h.in_use), None)
    if snap.transports:
        extra["transport"] = {t.hub: t.transport for t in snap.transports}
    return {
        "node": snap.node,
        "overlay_ip": snap.overlay_ip,
        "wg": {
            "interface": snap.interface,
            "peer_count": len(wg_peers),
            "max_last_handshake_sec": max(ages) if ages else -1,
        },
        "disk_free_gb": round(snap.disk_free_bytes / 1e9, 1),
        "time": rfc3339_ms(now),
        "role": snap.role,
        "state": snap.state(stale_after, now),
        "peers_up": sum(1 for p in snap.peers if p.state(now, stale_after) == "up"),
        "version": VERSION,
        **extra,
        **_public_db(snap, now),
    }


def _public_db(snap: Snapshot, now: float) -> dict[str, Any]:
    """The database's health in public-safe terms: no addresses, names or errors."""
    out: dict[str, Any] = {}
    if snap.postgres is not None:
        v = snap.postgres
        out["postgres"] = {"role": v.role if v.up else "down",
                           "replication_lag_sec": v.lag_sec if v.role == "replica" else None}
    if snap.pgbackrest is not None:
        last = snap.pgbackrest.last_success
        out["backup"] = {"last_success": rfc3339_ms(last) if last else None,
                         "age_sec": int(now - last) if last is not None else None,
                         "overdue": snap.pgbackrest.overdue(now)}
    return out


def _detail_db(snap: Snapshot, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if snap.postgres is not None:
        v = snap.postgres
        out["postgres"] = {
            "up": v.up, "role": v.role, "version": v.version, "error": v.error,
            "replicas": [asdict(r) for r in v.replicas], "slots": [asdict(s) for s in v.slots],
            "upstream": v.upstream, "receiver_status": v.receiver_status,
            "lag_bytes": v.lag_bytes, "lag_sec": v.lag_sec,
        }
    if snap.pgbackrest is not None:
        out["backup"] = backrest_json(snap.pgbackrest)
    return out


def backrest_json(br: BackRestView) -> dict[str, Any]:
    """The backups (pgBackRest) in the detailed status (and dvpnctl backup now's answer)."""
    names = {1: "local", 2: "offsite"}
    return {
        "tool": "pgbackrest", "stanza": br.stanza, "primary": br.primary, "running": br.running,
        "repos": [dict(asdict(r), name=names.get(r.key, str(r.key)),
                   last_full_time=rfc3339_ms(r.last_full) if r.last_full else None,
                   last_diff_time=rfc3339_ms(r.last_diff) if r.last_diff else None) for r in br.repos],
        "offsite_behind_segments": br.offsite_behind, "pg_wal_bytes": br.wal_bytes,
        "wal_waiting_segments": br.wal_waiting, "drill_databases": br.drill_databases,
        "last_ok": {op: rfc3339_ms(t) for op, t in br.last_ok},
        "problems": list(br.problems),
    }


def _detail_roster(snap: Snapshot, now: float) -> dict[str, Any] | None:
    r = snap.roster
    if r is None:
        return None
    return dict(asdict(r), expired=r.expired(now),
                age_sec=int(now - r.issued) if r.issued is not None else None)


def render_detail(snap: Snapshot, now: float, stale_after: int) -> dict[str, Any]:
    """The root-only view for `dvpnctl status --json`: every peer with its endpoint and counters."""
    return {
        "node": snap.node,
        "role": snap.role,
        "state": snap.state(stale_after, now),
        "problems": snap.problems(stale_after, now),
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
                "interface": p.interface or snap.interface,
            }
            for p in snap.peers
        ],
        "mode": snap.mode,
        "roster": _detail_roster(snap, now),
        "hubs": [asdict(h) for h in snap.hubs],
        "failovers": snap.failovers,
        "transports": [asdict(t) for t in snap.transports],
        "relay": asdict(snap.relay) if snap.relay is not None else None,
        "dns": asdict(snap.dns) if snap.dns is not None else None,
        **_detail_db(snap, now),
    }
