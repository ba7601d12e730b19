"""Loading the configuration: one YAML file (plus `peers.d/*.yaml` on the hub), validated into a
Config (config/model.py).

Every problem is reported as one line `FILE:LINE: key.path: problem`; loading collects all
of them before failing, so one `dvpnctl check` run shows everything to fix.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from dvpnd.config.model import (
    BACKENDS,
    COMPRESSIONS,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_KEEPALIVE,
    DEFAULT_METRICS_PORT,
    DEFAULT_MTU,
    DEFAULT_NETWORK,
    DEFAULT_PG_PORT,
    DEFAULT_PORT,
    DEFAULT_STATE_DIR,
    DEFAULT_STATUS_PORT,
    LOG_LEVELS,
    BackupConfig,
    Config,
    Endpoint,
    FirewallConfig,
    HubSpec,
    ListenConfig,
    PeerSpec,
    PostgresConfig,
    WireGuardConfig,
)
from dvpnd.config.yamlsrc import KeyPath, Source, YamlSyntaxError, load_yaml_file
from dvpnd.errors import ConfigError
from dvpnd.wireguard.keys import decode_key

_DURATION = re.compile(r"^(\d+)\s*([smhd]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# RFC 1918 and the shared space of RFC 6598: an overlay anywhere else would capture real
# destinations (0.0.0.0/0), loopback, multicast or link-local traffic
PRIVATE_BLOCKS = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}\Z")
_IFPATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,14}\*?\Z")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)


T = TypeVar("T")
_MISSING = object()


class _Reader:
    """Walks a parsed document, converting values and collecting problems."""

    def __init__(self, src: Source, problems: list[str]):
        self.src = src
        self.problems = problems

    def error(self, kp: KeyPath, problem: str) -> None:
        self.problems.append(f"{self.src.where(kp)}: {problem}")

    def section(self, parent: Any, kp: KeyPath, allowed: set[str]) -> dict[str, Any]:
        """The mapping at kp (or {} if absent); unknown keys are reported."""
        value = _lookup(parent, kp[-1]) if kp else parent
        if value is _MISSING or value is None:
            return {}
        if not isinstance(value, dict):
            self.error(kp, f"must be a mapping, got {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                hint = _closest(key, allowed)
                self.error(kp + (key,), "unknown key" + (f" (did you mean '{hint}'?)" if hint else ""))
        return value

    def get(
        self,
        mapping: dict[str, Any],
        kp: KeyPath,
        kind: type | tuple[type, ...],
        default: Any = _MISSING,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """The value at kp if it has the right type and passes `check`, else the default."""
        value = mapping.get(str(kp[-1]), _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                self.error(kp, "is required")
                return None
            return default
        if not _is_kind(value, kind):
            self.error(kp, f"must be {_kind_name(kind)}, got {_kind(value)}")
            return None if default is _MISSING else default
        if check is not None:
            problem = check(value)
            if problem:
                self.error(kp, problem)
                return None if default is _MISSING else default
        return value

    def port_list(self, mapping: dict[str, Any], kp: KeyPath, default: tuple[int, ...]) -> tuple[int, ...]:
        value = mapping.get(str(kp[-1]), _MISSING)
        if value is _MISSING or value is None:
            return default
        if not isinstance(value, list):
            self.error(kp, f"must be a list of ports, got {_kind(value)}")
            return default
        ports: list[int] = []
        for i, item in enumerate(value):
            if not _is_kind(item, int):
                self.error(kp + (i,), f"must be an integer port, got {_kind(item)}")
            elif problem := _check_port(item):
                self.error(kp + (i,), problem)
            elif item in ports:
                self.error(kp + (i,), f"port {item} is listed twice")
            else:
                ports.append(item)
        return tuple(ports)


def _lookup(parent: Any, key: Any) -> Any:
    if isinstance(parent, dict):
        return parent.get(key, _MISSING)
    return _MISSING


def _is_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, kinds)


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
    return match[0] if match else None


def _check_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"port {value} is out of range (1-65535)"


def _check_key(value: str) -> str | None:
    try:
        raw = decode_key(value)
    except ValueError as e:
        return f"public key {e}"
    if raw == bytes(32):
        return "is the all-zero key, which no peer can have"
    return None


def _check_ifname(value: str) -> str | None:
    return None if _IFNAME.match(value) else "is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)"


def check_name(value: str) -> str | None:
    if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}\Z", value):
        return None
    return "must be 1-63 characters of letters, digits, '_', '.', '-' starting with a letter or digit"


def parse_endpoint(text: str) -> Endpoint:
    """Parse `host:port` or `[v6]:port`; raise ValueError with the reason."""
    text = text.strip()
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)\Z", text) or re.match(r"^([^:\[\]]+):(\d+)\Z", text)
    if not m:
        raise ValueError("must be host:port (or [IPv6]:port)")
    host, port = m.group(1), int(m.group(2))
    if problem := _check_port(port):
        raise ValueError(problem)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ValueError(f"'{host}' is neither an IP address nor a DNS name") from None
    return Endpoint(host, port)


TOP_KEYS = {
    "role", "name", "state_dir", "log_level", "reconcile_interval", "stale_after",
    "overlay", "wireguard", "hub", "peers", "peers_dir", "firewall", "status", "metrics",
    "control", "public_endpoint", "postgres", "backup",
}


def load_config(path: Path) -> Config:
    """Load and validate the config at `path` (and its peers.d); raise ConfigError."""
    try:
        src = load_yaml_file(path)
    except YamlSyntaxError as e:
        raise ConfigError([e.message]) from None
    problems: list[str] = []
    config = _build(src, problems)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def _build(src: Source, problems: list[str]) -> Config | None:
    r = _Reader(src, problems)
    top = r.section(src.data, (), TOP_KEYS)
    if not isinstance(src.data, dict):
        return None
    role = r.get(top, ("role",), str, check=lambda v: None if v in ("hub", "spoke") else "must be 'hub' or 'spoke'")
    if role is None:
        return None
    is_hub = role == "hub"
    name = r.get(top, ("name",), str, default=socket.gethostname().split(".")[0] or "dvpn", check=check_name)
    state_dir = _abs_path(r, top, ("state_dir",), str(DEFAULT_STATE_DIR))
    log_level = r.get(top, ("log_level",), str, default="info",
                      check=lambda v: None if v in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}")
    interval = float(r.get(top, ("reconcile_interval",), float, default=30.0,
                           check=lambda v: None if 1 <= v <= 3600 else "must be between 1 and 3600 seconds"))
    stale_after = r.get(top, ("stale_after",), int, default=180,
                        check=lambda v: None if 30 <= v <= 86400 else "must be between 30 and 86400 seconds")

    # overlay
    ov = r.section(top, ("overlay",), {"network", "hub_address", "address"})
    network = _network(r, ov)
    hub_address = _address(r, ov, ("overlay", "hub_address"), network,
                           default=str(next(network.hosts())) if network else None)
    address: IPv4Address | None
    if is_hub:
        address = _address(r, ov, ("overlay", "address"), network, default=str(hub_address) if hub_address else None)
        if address is not None and hub_address is not None and address != hub_address:
            r.error(("overlay", "address"), f"the hub's address must be overlay.hub_address ({hub_address})")
    else:
        address = _address(r, ov, ("overlay", "address"), network)
        if address is not None and address == hub_address:
            r.error(("overlay", "address"), f"{address} is the hub's address; a spoke needs its own")

    # wireguard
    wgm = r.section(top, ("wireguard",), {"interface", "backend", "listen_port", "mtu",
                                          "persistent_keepalive", "private_key_file"})
    wg = WireGuardConfig(
        interface=r.get(wgm, ("wireguard", "interface"), str, default="wg0", check=_check_ifname),
        backend=r.get(wgm, ("wireguard", "backend"), str, default="auto",
                      check=lambda v: None if v in BACKENDS else f"must be one of {', '.join(BACKENDS)}"),
        listen_port=r.get(wgm, ("wireguard", "listen_port"), int,
                          default=DEFAULT_PORT if is_hub else None, check=_check_port),
        mtu=r.get(wgm, ("wireguard", "mtu"), int, default=DEFAULT_MTU,
                  check=lambda v: None if 1280 <= v <= 9000 else "must be between 1280 and 9000"),
        persistent_keepalive=r.get(wgm, ("wireguard", "persistent_keepalive"), int, default=DEFAULT_KEEPALIVE,
                                   check=lambda v: None if 0 <= v <= 65535 else "must be between 0 and 65535"),
        private_key_file=_abs_path(r, wgm, ("wireguard", "private_key_file"), str(state_dir / "private.key")),
    )

    # hub (spokes) / peers (hub)
    hub: HubSpec | None = None
    public_endpoint: Endpoint | None = None
    peers: list[PeerSpec] = []
    peers_dir = Path(r.get(top, ("peers_dir",), str, default="peers.d"))
    if not peers_dir.is_absolute():
        peers_dir = src.path.parent / peers_dir
    if is_hub:
        if "hub" in top:
            r.error(("hub",), "only a spoke names a hub (this node has role: hub)")
        peers = _peers(r, top, peers_dir, network, hub_address, problems)
        ep_text = r.get(top, ("public_endpoint",), str, default="")
        if ep_text:
            try:
                public_endpoint = parse_endpoint(ep_text)
            except ValueError as e:
                r.error(("public_endpoint",), f"'{ep_text}' {e}")
    else:
        if "public_endpoint" in top:
            r.error(("public_endpoint",), "only the hub has a public_endpoint (spokes name hub.endpoint)")
        if "peers" in top:
            r.error(("peers",), "only the hub lists peers (this node has role: spoke)")
        hub = _hub(r, top)

    pg = _postgres(r, top, is_hub, name, network, address)
    backup = _backup(r, top, pg, state_dir)
    fw = _firewall(r, top, is_hub, wg)
    if pg.enabled and pg.port in fw.public_tcp_ports:
        r.error(("firewall", "public_tcp_ports"),
                f"TCP {pg.port} is PostgreSQL's port, which is open to other spokes on the overlay only")
    status = _listen(r, top, "status", enabled=True, address="127.0.0.1" if is_hub else "0.0.0.0",
                     port=DEFAULT_STATUS_PORT)
    metrics = _listen(r, top, "metrics", enabled=True, address="127.0.0.1", port=DEFAULT_METRICS_PORT)
    ctl = r.section(top, ("control",), {"socket"})
    control_socket = _abs_path(r, ctl, ("control", "socket"), str(DEFAULT_CONTROL_SOCKET))
    if status.enabled and metrics.enabled and status.port == metrics.port and status.address == metrics.address:
        r.error(("metrics", "port"), f"port {metrics.port} is already used by status.port")

    if network is None or hub_address is None or address is None:
        return None
    return Config(
        path=src.path, role=role, name=name, state_dir=state_dir, network=network,
        hub_address=hub_address, address=address, wireguard=wg, hub=hub, peers=tuple(peers),
        firewall=fw, status=status, metrics=metrics, control_socket=control_socket,
        reconcile_interval=interval, stale_after=stale_after, log_level=log_level, peers_dir=peers_dir,
        public_endpoint=public_endpoint, postgres=pg, backup=backup,
    )


def _network(r: _Reader, ov: dict[str, Any]) -> IPv4Network | None:
    text = r.get(ov, ("overlay", "network"), str, default=DEFAULT_NETWORK)
    if text is None:
        return None
    try:
        net = IPv4Network(text, strict=True)
    except ValueError as e:
        r.error(("overlay", "network"), f"'{text}' is not an IPv4 network: {e}")
        return None
    if net.prefixlen > 29:
        r.error(("overlay", "network"), f"/{net.prefixlen} is too small for a hub and spokes (at most /29)")
        return None
    if not any(net.subnet_of(block) for block in PRIVATE_BLOCKS):
        r.error(("overlay", "network"), f"{net} is not a private range: the overlay must lie within "
                + ", ".join(str(b) for b in PRIVATE_BLOCKS))
        return None
    return net


def _address(r: _Reader, m: dict[str, Any], kp: KeyPath, network: IPv4Network | None,
             default: str | None = None) -> IPv4Address | None:
    text = r.get(m, kp, str, default=default if default is not None else _MISSING)
    if text is None:
        return None
    return _in_overlay(r, kp, text, network)


def _in_overlay(r: _Reader, kp: KeyPath, text: str, network: IPv4Network | None) -> IPv4Address | None:
    try:
        addr = IPv4Address(text)
    except ValueError:
        r.error(kp, f"'{text}' is not an IPv4 address")
        return None
    if network is not None:
        if addr not in network:
            r.error(kp, f"{addr} is outside the overlay {network}")
            return None
        if addr in (network.network_address, network.broadcast_address):
            r.error(kp, f"{addr} is the network or broadcast address of {network}")
            return None
    return addr


def _hub(r: _Reader, top: dict[str, Any]) -> HubSpec | None:
    if "hub" not in top:
        r.error(("hub",), "is required on a spoke (the hub's public_key and endpoint)")
        return None
    h = r.section(top, ("hub",), {"public_key", "endpoint"})
    key = r.get(h, ("hub", "public_key"), str, check=_check_key)
    ep_text = r.get(h, ("hub", "endpoint"), str)
    endpoint = None
    if ep_text is not None:
        try:
            endpoint = parse_endpoint(ep_text)
        except ValueError as e:
            r.error(("hub", "endpoint"), f"'{ep_text}' {e}")
    if key is None or endpoint is None:
        return None
    return HubSpec(public_key=key, endpoint=endpoint)


PEER_KEYS = {"name", "public_key", "address", "next_public_key"}


def _peers(r: _Reader, top: dict[str, Any], peers_dir: Path, network: IPv4Network | None,
           hub_address: IPv4Address | None, problems: list[str]) -> list[PeerSpec]:
    entries: list[tuple[_Reader, dict[str, Any], KeyPath, str | None]] = []
    inline = top.get("peers")
    if inline is not None:
        if not isinstance(inline, list):
            r.error(("peers",), f"must be a list of peers, got {_kind(inline)}")
        else:
            for i, item in enumerate(inline):
                kp: KeyPath = ("peers", i)
                if not isinstance(item, dict):
                    r.error(kp, f"must be a mapping with name, public_key, address; got {_kind(item)}")
                    continue
                r.section(inline, kp, PEER_KEYS)
                entries.append((r, item, kp, None))
    if peers_dir.is_dir():
        for f in sorted(peers_dir.glob("*.yaml")):
            if problem := check_name(f.stem):
                problems.append(f"{f}: the file's name {f.stem!r} {problem} (NAME.yaml names the spoke)")
                continue
            try:
                psrc = load_yaml_file(f)
            except YamlSyntaxError as e:
                problems.append(e.message)
                continue
            pr = _Reader(psrc, problems)
            if not isinstance(psrc.data, dict):
                pr.error((), "must be a mapping with public_key, address and optionally name")
                continue
            pr.section(psrc.data, (), PEER_KEYS)
            entries.append((pr, psrc.data, (), f.stem))

    peers: list[PeerSpec] = []
    seen_name: dict[str, str] = {}
    seen_key: dict[str, str] = {}
    seen_addr: dict[IPv4Address, str] = {}
    for rd, item, kp, default_name in entries:
        name = rd.get(item, kp + ("name",), str, default=default_name if default_name else _MISSING,
                      check=check_name)
        key = rd.get(item, kp + ("public_key",), str, check=_check_key)
        next_key = rd.get(item, kp + ("next_public_key",), str, default="", check=_check_key) or None
        addr_text = rd.get(item, kp + ("address",), str)
        addr = _in_overlay(rd, kp + ("address",), addr_text, network) if addr_text is not None else None
        origin = rd.src.where(kp)
        if addr is not None and addr == hub_address:
            rd.error(kp + ("address",), f"{addr} is the hub's address; a spoke needs its own")
            addr = None
        dup = False
        if name is not None and name in seen_name:
            rd.error(kp + ("name",), f"duplicate peer name '{name}' (also at {seen_name[name]})")
            dup = True
        if key is not None and key in seen_key:
            rd.error(kp + ("public_key",), f"duplicate public key (also at {seen_key[key]})")
            dup = True
        if next_key is not None and (next_key in seen_key or next_key == key):
            rd.error(kp + ("next_public_key",), "duplicate public key (already in use)")
            dup = True
        if addr is not None and addr in seen_addr:
            rd.error(kp + ("address",), f"duplicate address {addr} (also at {seen_addr[addr]})")
            dup = True
        if name is None or key is None or addr is None or dup:
            continue
        seen_name[name], seen_key[key], seen_addr[addr] = origin, origin, origin
        if next_key is not None:
            seen_key[next_key] = origin
        peers.append(PeerSpec(name=name, public_key=key, address=addr, origin=origin, next_public_key=next_key))
    return peers


def _firewall(r: _Reader, top: dict[str, Any], is_hub: bool, wg: WireGuardConfig) -> FirewallConfig:
    f = r.section(top, ("firewall",), {"enabled", "public_tcp_ports", "public_udp_ports",
                                       "overlay_tcp_ports", "trusted_interfaces"})
    enabled = r.get(f, ("firewall", "enabled"), bool, default=True)
    tcp = r.port_list(f, ("firewall", "public_tcp_ports"), (22,) if is_hub else ())
    udp = r.port_list(f, ("firewall", "public_udp_ports"), ())
    if wg.listen_port is not None and wg.listen_port in udp:
        r.error(("firewall", "public_udp_ports"),
                f"UDP {wg.listen_port} is the WireGuard port, which the policy opens by itself")
    overlay: tuple[int, ...] | None = None
    raw = f.get("overlay_tcp_ports")
    if raw is not None and raw != "all":
        if isinstance(raw, str):
            r.error(("firewall", "overlay_tcp_ports"), "must be 'all' or a list of ports")
        else:
            overlay = r.port_list(f, ("firewall", "overlay_tcp_ports"), ())
    trusted: list[str] = []
    raw_t = f.get("trusted_interfaces")
    if raw_t is not None:
        if not isinstance(raw_t, list):
            r.error(("firewall", "trusted_interfaces"), f"must be a list of interface names, got {_kind(raw_t)}")
        else:
            for i, name in enumerate(raw_t):
                kp: KeyPath = ("firewall", "trusted_interfaces", i)
                if not isinstance(name, str) or not _IFPATTERN.match(name):
                    r.error(kp, f"{name!r} is not an interface name (up to 15 characters, "
                                "optionally ending in '*')")
                elif name in ("lo", wg.interface):
                    r.error(kp, f"'{name}' cannot be trusted: the policy already decides for it")
                elif name in trusted:
                    r.error(kp, f"'{name}' is listed twice")
                else:
                    trusted.append(name)
    return FirewallConfig(enabled=enabled, public_tcp_ports=tcp, public_udp_ports=udp,
                          overlay_tcp_ports=overlay, trusted_interfaces=tuple(trusted))


def _listen(r: _Reader, top: dict[str, Any], key: str, *, enabled: bool, address: str, port: int) -> ListenConfig:
    m = r.section(top, (key,), {"enabled", "listen", "port", "max_connections", "max_connections_per_source"})
    en = r.get(m, (key, "enabled"), bool, default=enabled)

    def check_addr(v: str) -> str | None:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            return f"'{v}' is not an IP address"
        return None

    addr = r.get(m, (key, "listen"), str, default=address, check=check_addr)
    p = r.get(m, (key, "port"), int, default=port, check=_check_port)

    def check_cap(v: int) -> str | None:
        return None if 1 <= v <= 65536 else f"{v} is out of range (1-65536)"

    total = r.get(m, (key, "max_connections"), int, default=ListenConfig.max_connections, check=check_cap)
    per_source = r.get(m, (key, "max_connections_per_source"), int, default=min(total, ListenConfig.max_per_source),
                       check=check_cap)
    if per_source > total:
        r.error((key, "max_connections_per_source"), f"{per_source} is more than max_connections ({total})")
    return ListenConfig(enabled=en, address=addr, port=p, max_connections=total, max_per_source=per_source)


def parse_duration(value: int | str) -> int:
    """Seconds from an integer or a string like '90', '30m', '6h', '7d'; ValueError otherwise."""
    if isinstance(value, int):
        return value
    m = _DURATION.match(value.strip())
    if not m:
        raise ValueError(f"'{value}' is not a duration (seconds, or a number with s, m, h or d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _duration(r: _Reader, m: dict[str, Any], kp: KeyPath, default: int, lo: int, hi: int) -> int:
    raw = r.get(m, kp, (int, str), default=default)
    try:
        value = parse_duration(raw)
    except ValueError as e:
        r.error(kp, str(e))
        return default
    if not lo <= value <= hi:
        r.error(kp, f"must be between {lo} and {hi} seconds, got {value}")
        return default
    return value


PG_KEYS = {"enabled", "data_dir", "config_dir", "bin_dir", "port", "socket_dir", "os_user", "primary",
           "replication_user", "password_file", "slot"}


def _abs_path(r: _Reader, m: dict[str, Any], kp: KeyPath, default: str) -> Path:
    text = r.get(m, kp, str, default=default,
                 check=lambda v: None if v.startswith("/") else f"'{v}' must be an absolute path")
    return Path(text)


def _postgres(r: _Reader, top: dict[str, Any], is_hub: bool, name: str | None,
              network: IPv4Network | None, address: IPv4Address | None) -> PostgresConfig:
    m = r.section(top, ("postgres",), PG_KEYS)
    enabled = r.get(m, ("postgres", "enabled"), bool, default=bool(m))
    if not enabled:
        return PostgresConfig()
    if is_hub:
        r.error(("postgres",), "the hub runs no database (PostgreSQL lives on the spokes)")
        return PostgresConfig()
    data_dir = _abs_path(r, m, ("postgres", "data_dir"), str(PostgresConfig.data_dir))
    primary = None
    if "primary" in m:
        primary = _address(r, m, ("postgres", "primary"), network)
    else:
        r.error(("postgres", "primary"), "is required: the overlay address of the primary server "
                                         "(this node's own address on the primary)")
    ident = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
    default_slot = re.sub(r"[^a-z0-9_]", "_", (name or "dvpn").lower())
    return PostgresConfig(
        enabled=True,
        data_dir=data_dir,
        config_dir=_abs_path(r, m, ("postgres", "config_dir"), str(data_dir)),
        bin_dir=_abs_path(r, m, ("postgres", "bin_dir"), str(PostgresConfig.bin_dir)),
        port=r.get(m, ("postgres", "port"), int, default=DEFAULT_PG_PORT, check=_check_port),
        socket_dir=_abs_path(r, m, ("postgres", "socket_dir"), str(PostgresConfig.socket_dir)),
        os_user=r.get(m, ("postgres", "os_user"), str, default="postgres",
                      check=lambda v: None if re.match(r"^[a-z_][a-z0-9_\-]{0,31}\Z", v) else "is not a user name"),
        primary=primary,
        replication_user=r.get(m, ("postgres", "replication_user"), str, default="replicator",
                               check=lambda v: None if ident.match(v) else
                               "must be a lower-case SQL identifier (a-z, 0-9, _)"),
        password_file=_abs_path(r, m, ("postgres", "password_file"), str(PostgresConfig.password_file)),
        slot=r.get(m, ("postgres", "slot"), str, default=default_slot,
                   check=lambda v: None if ident.match(v) else "must be a-z, 0-9 and _ (a replication slot name)"),
    )


BACKUP_KEYS = {"enabled", "dir", "interval", "keep_last", "keep_age", "compress", "verify", "timeout", "max_rate"}


def _check_rate(v: str) -> str | None:
    m = re.match(r"^(\d+)([kM]?)\Z", v)
    if not m:
        return f"'{v}' must be a rate in kB/s, or with a k or M suffix (e.g. 500k, 50M)"
    kb = int(m.group(1)) * (1024 if m.group(2) == "M" else 1)
    return None if 32 <= kb <= 1024 * 1024 else f"'{v}' must be between 32k and 1024M"


def _backup(r: _Reader, top: dict[str, Any], pg: PostgresConfig, state_dir: Path) -> BackupConfig:
    m = r.section(top, ("backup",), BACKUP_KEYS)
    enabled = r.get(m, ("backup", "enabled"), bool, default=pg.enabled)
    if not enabled:
        return BackupConfig()
    if not pg.enabled:
        r.error(("backup", "enabled"), "backups need the postgres section (enabled: true)")
        return BackupConfig()

    def check_compress(v: str) -> str | None:
        method, _, level = v.partition(":")
        if method not in COMPRESSIONS:
            return f"'{v}': the method must be one of {', '.join(COMPRESSIONS)}"
        if level and not (level.isdigit() and 1 <= int(level) <= 9 and method == "gzip"):
            return f"'{v}': the level after 'gzip:' must be 1 to 9 (none takes no level)"
        return None

    keep_last = r.get(m, ("backup", "keep_last"), int, default=7,
                      check=lambda v: None if 0 <= v <= 10000 else "must be between 0 and 10000")
    keep_age = _duration(r, m, ("backup", "keep_age"), 0, 0, 10 * 365 * 86400)
    if keep_last == 0 and keep_age == 0:
        r.error(("backup", "keep_last"), "with keep_age 0 too, nothing but the newest backup would be kept; "
                                         "set keep_last or keep_age")
    return BackupConfig(
        enabled=True,
        dir=_abs_path(r, m, ("backup", "dir"), str(state_dir / "backups")),
        interval=_duration(r, m, ("backup", "interval"), 86400, 60, 30 * 86400),
        keep_last=keep_last,
        keep_age=keep_age,
        compress=r.get(m, ("backup", "compress"), str, default="gzip:1", check=check_compress),
        verify=r.get(m, ("backup", "verify"), bool, default=True),
        timeout=_duration(r, m, ("backup", "timeout"), 6 * 3600, 60, 7 * 86400),
        max_rate=r.get(m, ("backup", "max_rate"), str, default=None, check=_check_rate),
    )
