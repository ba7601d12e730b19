"""The configuration's model: frozen dataclasses and their defaults, built by config/load.py."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/dvpn/dvpnd.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/dvpn")
DEFAULT_CONTROL_SOCKET = Path("/run/dvpn/control.sock")
DEFAULT_NETWORK = "10.88.0.0/24"
DEFAULT_PORT = 51820
DEFAULT_KEEPALIVE = 25
DEFAULT_MTU = 1420
DEFAULT_STATUS_PORT = 8000
DEFAULT_METRICS_PORT = 9586
DEFAULT_PG_PORT = 5432
BACKENDS = ("auto", "kernel", "userspace")
LOG_LEVELS = ("debug", "info", "warning", "error")
MODES = ("routed", "confidential")
DEFAULT_TRANSIT_NETWORK = "10.89.0.0/24"
DEFAULT_OVERLAY_PORT = 51821
OVERLAY_OVERHEAD = 80  # a WireGuard packet inside another one: IPv6-sized outer header + WireGuard's 32
TRANSPORTS = ("udp", "tcp", "auto")
DEFAULT_RELAY_PORT = 443
DEFAULT_RELAY_LOCAL_PORT = 51830


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
            return True
        except ValueError:
            return False


@dataclass(frozen=True)
class PeerSpec:
    """A spoke as the hub knows it."""

    name: str
    public_key: str
    address: IPv4Address
    origin: str  # "file:line" it was declared at, for messages
    next_public_key: str | None = None  # a key rotation in progress (see `dvpnctl spoke rotate`)

    @cached_property
    def host_route(self) -> frozenset[str]:
        """{address/32}: the spoke's allowed IPs on the hub, made once (every pass renders them,
        and an IPv4Address prints slowly: a hub's thousands cost milliseconds)."""
        return frozenset({str(self.address) + "/32"})


@dataclass(frozen=True)
class HubSpec:
    """A hub as a spoke knows it. With several (confidential mode), each has a transit network
    of its own, and the order of `hubs:` is the order of preference."""

    public_key: str
    endpoint: Endpoint
    name: str = "hub"
    transit_network: IPv4Network | None = None  # None: overlay.transit_network
    # the TCP fallback: "tcp" carries this hub's tunnel over a WebSocket to its relay (dvpn-relay);
    # "auto" does so while UDP to the hub fails
    transport: str = "udp"
    relay_url: str | None = None  # wss://host:443/dvpn/relay/v1 (default: the endpoint's host)
    relay_fingerprint: str | None = None  # sha256 of the relay's certificate, hex (pinned); or
    relay_ca: Path | None = None  # a CA file that verifies it by the URL's host name


@dataclass(frozen=True)
class WireGuardConfig:
    interface: str = "wg0"
    backend: str = "auto"
    listen_port: int | None = None
    mtu: int = DEFAULT_MTU
    persistent_keepalive: int = DEFAULT_KEEPALIVE
    private_key_file: Path = DEFAULT_STATE_DIR / "private.key"


@dataclass(frozen=True)
class OverlayConfig:
    """The confidential overlay (overlay.mode: confidential): a transit tunnel to the hub carries
    a second WireGuard layer between spokes, whose keys the hub never has; membership is the
    roster signed by `authority`. In routed mode (the seed's design) only `mode` matters."""

    mode: str = "routed"
    authority: str | None = None  # the roster authority's Ed25519 public key (base64)
    min_serial: int = 0  # never accept a roster older than this (from `dvpnctl roster add`)
    transit_network: IPv4Network = IPv4Network(DEFAULT_TRANSIT_NETWORK)
    transit_interface: str = "wgt0"  # spokes: the tunnel to the hub (the hub's own wg0 is its transit)
    port: int = DEFAULT_OVERLAY_PORT  # spokes: the overlay's UDP port, reachable on transit addresses only
    mtu: int = DEFAULT_MTU - OVERLAY_OVERHEAD
    private_key_file: Path = DEFAULT_STATE_DIR / "overlay.key"
    roster_poll: float = 1.0  # spokes: how often to ask the hub for a newer roster (seconds)

    @property
    def confidential(self) -> bool:
        return self.mode == "confidential"


@dataclass(frozen=True)
class FirewallConfig:
    enabled: bool = True
    public_tcp_ports: tuple[int, ...] = ()
    public_udp_ports: tuple[int, ...] = ()
    # None means every port, from other spokes only.
    overlay_tcp_ports: tuple[int, ...] | None = None
    trusted_interfaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class PostgresConfig:
    """The local PostgreSQL server that dvpnd reports on and backs up (spokes only)."""

    enabled: bool = False
    data_dir: Path = Path("/var/lib/postgresql/15/main")
    config_dir: Path = Path("/var/lib/postgresql/15/main")  # where postgresql.conf is (Debian: /etc/postgresql/15/main)
    bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    port: int = DEFAULT_PG_PORT
    socket_dir: Path = Path("/var/run/postgresql")
    os_user: str = "postgres"
    primary: IPv4Address | None = None  # overlay address of the primary (replicas bootstrap from it)
    replication_user: str = "replicator"
    password_file: Path = Path("/etc/dvpn/pg-replication.password")
    slot: str = ""  # this node's replication slot on the primary

    @property
    def passfile(self) -> Path:
        """The server's copy of the replication password (pgpass format), outside the data directory."""
        return self.data_dir.parent / f"{self.data_dir.name}.dvpn.pgpass"


@dataclass(frozen=True)
class OffsiteConfig:
    """backup.pgbackrest.offsite: the S3-compatible repository (pgBackRest's repo2), encrypted
    on the spoke. Secrets are never here: the key pair comes from `credentials_file` (or
    dvpnd's environment), the cipher passphrase from `passphrase_file` or Dstack's GetKey."""

    endpoint: str
    bucket: str
    region: str
    path: str = "/dvpn"
    uri_style: str = "host"
    ca_file: Path | None = None
    host: str | None = None
    port: int | None = None
    keep_full: int = 4
    credentials_file: Path | None = None  # AWS_ACCESS_KEY_ID=... / AWS_SECRET_ACCESS_KEY=... lines
    passphrase: str = "file"  # "file" (passphrase_file) or "dstack" (the guest agent's GetKey)
    passphrase_file: Path | None = None
    dstack_socket: Path = Path("/var/run/dstack.sock")


@dataclass(frozen=True)
class PgBackRestConfig:
    """backup.pgbackrest: pgBackRest supervised by dvpnd."""

    home: Path  # pgbackrest.conf, conf.d/, spool/, lock/, log/, results/ (on the volume)
    stanza: str = "dvpn"
    repo: Path = Path("/var/lib/dvpn-pgbackrest/repo")  # the local repository (repo1)
    keep_full: int = 2
    full_every: int = 7 * 86400
    diff_every: int = 86400
    check_every: int = 3600
    verify_every: int = 7 * 86400
    drill_every: int = 7 * 86400  # a restore drill: the newest backup restored into scratch and started
    archive_timeout: int = 60
    io_timeout: int = 60  # seconds pgBackRest waits on the store (its io-timeout)
    process_max: int = 2
    wal_alarm: int = 1 << 30  # bytes of pg_wal past which status raises a problem
    runner: str = "auto"  # "systemd" (dvpn-pgbackrest@.service), "direct" (dvpnd runs it as the server's user)
    binary: str = "/usr/bin/pgbackrest"
    offsite: OffsiteConfig | None = None


@dataclass(frozen=True)
class BackupConfig:
    """backup: pgBackRest under dvpnd, on whenever the postgres section is (enabled: false: none)."""

    enabled: bool = False
    pgbackrest: PgBackRestConfig | None = None  # set when enabled


@dataclass(frozen=True)
class ProbeConfig:
    """Spokes with more than one hub: how each hub's forwarding is judged, end to end (an ICMP echo
    to another member's transit address behind that hub, which the hub must forward)."""

    interval: float = 0.2  # seconds between two probes through one hub
    window: float = 1.0  # a hub is down when no probe through it was answered for this long
    holddown: float = 10.0  # a hub back up is used again after it has been up this long


@dataclass(frozen=True)
class RelaySettings:
    """The TCP fallback's relay (`relay:`), a process of its own (dvpn-relay) that dvpnd configures.
    A hub listens when `enabled`; a spoke runs it when a hub's transport is tcp."""

    enabled: bool = False  # hub: listen for spokes over TCP
    address: str = "0.0.0.0"
    port: int = DEFAULT_RELAY_PORT
    cert: Path | None = None  # None: a self-signed pair in `self_signed_dir` (relay.crt, relay.key)
    key: Path | None = None
    self_signed_dir: Path | None = None  # None: the state directory
    max_clients: int = 1024
    max_per_ip: int = 16
    idle: float = 75.0
    probe_port: int = 51829  # hub: where the firewall redirects the UDP probes sent to WireGuard's port
    local_port: int = DEFAULT_RELAY_LOCAL_PORT  # spoke: WireGuard's endpoint for the first TCP hub (next: +1)
    udp_holddown: float = 30.0  # spoke, transport auto: UDP answered this long before going back to it
    spawn: str = "auto"  # auto: dvpnd starts it unless systemd runs dvpnd (then dvpn-relay.path does)
    config_file: Path = Path("/run/dvpn/relay.json")  # (default: beside the control socket)
    status_file: Path = Path("/run/dvpn/relay-status.json")


@dataclass(frozen=True)
class DnsConfig:
    """The overlay's resolver (`dns:`): the roster's names in `zone`, the rest forwarded."""

    enabled: bool = False
    zone: str = "dvpn.internal"
    listen: tuple[str, ...] = ()  # (the loader fills it: a spoke's overlay address, a hub's 127.0.0.1)
    port: int = 53
    upstream: tuple[str, ...] = ()  # empty: systemd-resolved's upstream file, else /etc/resolv.conf
    forward: bool = True  # False: REFUSED for names outside the zones
    resolved: bool = True  # route the zones here through systemd-resolved, where it runs in this namespace


@dataclass(frozen=True)
class ListenConfig:
    enabled: bool
    address: str
    port: int
    # behind a proxy (dstack-gateway) every client has its address: the per-source cap is the cap
    max_connections: int = 256
    max_per_source: int = 64


@dataclass(frozen=True)
class Config:
    path: Path
    role: str
    name: str
    state_dir: Path
    network: IPv4Network
    hub_address: IPv4Address
    address: IPv4Address
    wireguard: WireGuardConfig
    hub: HubSpec | None
    peers: tuple[PeerSpec, ...]
    firewall: FirewallConfig
    status: ListenConfig
    metrics: ListenConfig
    control_socket: Path
    reconcile_interval: float
    stale_after: int
    log_level: str
    peers_dir: Path = field(default=Path("peers.d"))
    public_endpoint: Endpoint | None = None  # hub: how spokes reach it (printed by `spoke add`)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    more_hubs: tuple[HubSpec, ...] = ()  # spokes, confidential mode: the hubs after `hub`, in order
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    relay: RelaySettings = field(default_factory=RelaySettings)
    dns: DnsConfig = field(default_factory=DnsConfig)

    @property
    def hubs(self) -> tuple[HubSpec, ...]:
        """Every hub a spoke uses, preferred first."""
        return ((self.hub,) if self.hub is not None else ()) + self.more_hubs

    def hub_transit_network(self, hub: HubSpec) -> IPv4Network:
        return hub.transit_network or self.overlay.transit_network

    def transit_address_via(self, hub: HubSpec, address: IPv4Address) -> IPv4Address:
        """A member's transit address behind `hub`: the same host number in that hub's network."""
        offset = int(address) - int(self.network.network_address)
        return self.hub_transit_network(hub).network_address + offset

    @property
    def transit_networks(self) -> tuple[IPv4Network, ...]:
        """Every transit network this node is on (a hub: its own; a spoke: one per hub)."""
        if self.is_hub or not self.hubs:
            return (self.overlay.transit_network,)
        return tuple(self.hub_transit_network(h) for h in self.hubs)

    @property
    def tcp_hubs(self) -> tuple[HubSpec, ...]:
        """The hubs that may be reached over TCP (transport tcp or auto)."""
        return tuple(h for h in self.hubs if h.transport != "udp")

    @property
    def needs_relay(self) -> bool:
        return self.relay.enabled if self.is_hub else bool(self.tcp_hubs)

    def relay_local_port(self, hub: HubSpec) -> int:
        """Where WireGuard sends what goes to `hub` over TCP: the spoke's relay on loopback."""
        return self.relay.local_port + self.tcp_hubs.index(hub)

    @property
    def is_hub(self) -> bool:
        return self.role == "hub"

    @property
    def confidential(self) -> bool:
        return self.overlay.confidential

    def transit_address(self, address: IPv4Address) -> IPv4Address:
        """A member's transit address: the same host number in the transit network."""
        offset = int(address) - int(self.network.network_address)
        return self.overlay.transit_network.network_address + offset

    @property
    def hub_transit_address(self) -> IPv4Address:
        return self.transit_address(self.hub_address)
