"""Loading the configuration: one YAML file (plus `peers.d/*.yaml` on the hub), validated into a
Config (config/model.py).

Every problem is reported as one line `FILE:LINE: key.path: problem`; loading collects all
of them before failing, so one `dvpnctl check` run shows everything to fix."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from dvpnd.config.database import backup_section, postgres_section
from dvpnd.config.dns import dns_section
from dvpnd.config.fields import (
    IFPATTERN_RE,
    MISSING,
    Reader,
    abs_path,
    check_cap,
    check_ifname,
    check_ip,
    check_key,
    check_name,
    check_port,
    in_overlay,
    kind_of,
    overlay_address,
    parse_endpoint,
)
from dvpnd.config.model import (
    BACKENDS,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_KEEPALIVE,
    DEFAULT_METRICS_PORT,
    DEFAULT_MTU,
    DEFAULT_NETWORK,
    DEFAULT_OVERLAY_PORT,
    DEFAULT_PORT,
    DEFAULT_STATE_DIR,
    DEFAULT_STATUS_PORT,
    DEFAULT_TRANSIT_NETWORK,
    LOG_LEVELS,
    MODES,
    OVERLAY_OVERHEAD,
    Config,
    Endpoint,
    FirewallConfig,
    HubSpec,
    ListenConfig,
    OverlayConfig,
    PeerSpec,
    ProbeConfig,
    WireGuardConfig,
)
from dvpnd.config.relay import HUB_RELAY_KEYS, hub_transport, relay_section
from dvpnd.config.yamlsrc import KeyPath, Source, YamlSyntaxError, load_yaml_file
from dvpnd.errors import ConfigError
from dvpnd.roster.authority import decode_public

# RFC 1918 and the shared space of RFC 6598: an overlay anywhere else would capture real
# destinations (0.0.0.0/0), loopback, multicast or link-local traffic
PRIVATE_BLOCKS = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))


OVERLAY_KEYS = {"network", "hub_address", "address", "mode", "authority", "min_serial", "transit_network",
                "transit_interface", "port", "mtu", "private_key_file", "roster_poll"}
TOP_KEYS = {
    "role", "name", "state_dir", "log_level", "reconcile_interval", "stale_after",
    "overlay", "wireguard", "hub", "hubs", "peers", "peers_dir", "firewall", "status", "metrics",
    "control", "public_endpoint", "postgres", "backup", "probe", "relay", "dns",
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
    r = Reader(src, problems)
    top = r.section(src.data, (), TOP_KEYS)
    if not isinstance(src.data, dict):
        return None
    role = r.get(top, ("role",), str, check=lambda v: None if v in ("hub", "spoke") else "must be 'hub' or 'spoke'")
    if role is None:
        return None
    is_hub = role == "hub"
    name = r.get(top, ("name",), str, default=socket.gethostname().split(".")[0] or "dvpn", check=check_name)
    state_dir = abs_path(r, top, ("state_dir",), str(DEFAULT_STATE_DIR))
    log_level = r.get(top, ("log_level",), str, default="info",
                      check=lambda v: None if v in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}")
    interval = float(r.get(top, ("reconcile_interval",), float, default=30.0,
                           check=lambda v: None if 1 <= v <= 3600 else "must be between 1 and 3600 seconds"))
    stale_after = r.get(top, ("stale_after",), int, default=180,
                        check=lambda v: None if 30 <= v <= 86400 else "must be between 30 and 86400 seconds")

    # overlay
    ov = r.section(top, ("overlay",), OVERLAY_KEYS)
    network = _network(r, ov)
    hub_address = overlay_address(r, ov, ("overlay", "hub_address"), network,
                           default=str(next(network.hosts())) if network else None)
    address: IPv4Address | None
    if is_hub:
        address = overlay_address(r, ov, ("overlay", "address"), network,
                                  default=str(hub_address) if hub_address else None)
        if address is not None and hub_address is not None and address != hub_address:
            r.error(("overlay", "address"), f"the hub's address must be overlay.hub_address ({hub_address})")
    else:
        address = overlay_address(r, ov, ("overlay", "address"), network)
        if address is not None and address == hub_address:
            r.error(("overlay", "address"), f"{address} is the hub's address; a spoke needs its own")

    # wireguard
    wgm = r.section(top, ("wireguard",), {"interface", "backend", "listen_port", "mtu",
                                          "persistent_keepalive", "private_key_file"})
    wg = WireGuardConfig(
        interface=r.get(wgm, ("wireguard", "interface"), str, default="wg0", check=check_ifname),
        backend=r.get(wgm, ("wireguard", "backend"), str, default="auto",
                      check=lambda v: None if v in BACKENDS else f"must be one of {', '.join(BACKENDS)}"),
        listen_port=r.get(wgm, ("wireguard", "listen_port"), int,
                          default=DEFAULT_PORT if is_hub else None, check=check_port),
        mtu=r.get(wgm, ("wireguard", "mtu"), int, default=DEFAULT_MTU,
                  check=lambda v: None if 1280 <= v <= 9000 else "must be between 1280 and 9000"),
        persistent_keepalive=r.get(wgm, ("wireguard", "persistent_keepalive"), int, default=DEFAULT_KEEPALIVE,
                                   check=lambda v: None if 0 <= v <= 65535 else "must be between 0 and 65535"),
        private_key_file=abs_path(r, wgm, ("wireguard", "private_key_file"), str(state_dir / "private.key")),
    )

    overlay = _overlay(r, ov, network, wg, state_dir)

    # hub (spokes) / peers (hub)
    hub: HubSpec | None = None
    more_hubs: tuple[HubSpec, ...] = ()
    public_endpoint: Endpoint | None = None
    peers: list[PeerSpec] = []
    peers_dir = Path(r.get(top, ("peers_dir",), str, default="peers.d"))
    if not peers_dir.is_absolute():
        peers_dir = src.path.parent / peers_dir
    if is_hub:
        if "hub" in top:
            r.error(("hub",), "only a spoke names a hub (this node has role: hub)")
        peers = _peers(r, top, peers_dir, network, hub_address, problems)
        if overlay.confidential and peers:
            r.error(("peers",), f"{len(peers)} spokes listed in peers or {peers_dir}: in confidential mode "
                                "the signed roster names the spokes (dvpnctl roster add, then roster publish "
                                "on the hub); peers.d is for overlay.mode: routed")
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
        if "hubs" in top:
            hubs = _hubs(r, top, overlay, network)
            hub, more_hubs = (hubs[0], tuple(hubs[1:])) if hubs else (None, ())
        else:
            hub = _hub(r, top)
    if is_hub and "hubs" in top:
        r.error(("hubs",), "only a spoke names hubs (this node has role: hub)")
    if "probe" in top and (is_hub or not more_hubs):
        r.error(("probe",), "is for a spoke with more than one hub")
    probe = _probe(r, top) if more_hubs else ProbeConfig()

    pg = postgres_section(r, top, is_hub, name, network, address)
    backup = backup_section(r, top, pg, state_dir)
    fw = _firewall(r, top, is_hub, wg)
    if pg.enabled and pg.port in fw.public_tcp_ports:
        r.error(("firewall", "public_tcp_ports"),
                f"TCP {pg.port} is PostgreSQL's port, which is open to other spokes on the overlay only")
    status = _listen(r, top, "status", enabled=True, address="127.0.0.1" if is_hub else "0.0.0.0",
                     port=DEFAULT_STATUS_PORT)
    metrics = _listen(r, top, "metrics", enabled=True, address="127.0.0.1", port=DEFAULT_METRICS_PORT)
    ctl = r.section(top, ("control",), {"socket"})
    control_socket = abs_path(r, ctl, ("control", "socket"), str(DEFAULT_CONTROL_SOCKET))
    relay = relay_section(r, top, is_hub, control_socket.parent)
    dns = dns_section(r, top, is_hub, str(address) if address is not None else None)
    if dns.enabled and overlay.mode != "confidential":
        r.error(("dns", "enabled"), "needs overlay.mode: confidential (the names come from the signed roster)")
    if status.enabled and metrics.enabled and status.port == metrics.port and status.address == metrics.address:
        r.error(("metrics", "port"), f"port {metrics.port} is already used by status.port")

    if network is None or hub_address is None or address is None:
        return None
    return Config(
        path=src.path, role=role, name=name, state_dir=state_dir, network=network,
        hub_address=hub_address, address=address, wireguard=wg, hub=hub, peers=tuple(peers),
        firewall=fw, status=status, metrics=metrics, control_socket=control_socket,
        reconcile_interval=interval, stale_after=stale_after, log_level=log_level, peers_dir=peers_dir,
        public_endpoint=public_endpoint, postgres=pg, backup=backup, overlay=overlay,
        more_hubs=more_hubs, probe=probe, relay=relay, dns=dns,
    )


def _overlay(r: Reader, ov: dict[str, Any], network: IPv4Network | None, wg: WireGuardConfig,
             state_dir: Path) -> OverlayConfig:
    kp = ("overlay",)
    mode = r.get(ov, kp + ("mode",), str, default="routed",
                 check=lambda v: None if v in MODES else f"must be one of {', '.join(MODES)}")
    if mode != "confidential":
        extra = sorted(set(ov) & (OVERLAY_KEYS - {"network", "hub_address", "address", "mode"}))
        for k in extra:
            r.error(kp + (k,), "is for overlay.mode: confidential")
        return OverlayConfig(mode=mode)

    def check_authority(v: str) -> str | None:
        try:
            decode_public(v)
        except ValueError as e:
            return f"'{v[:60]}' {e} (dvpnctl authority show prints it)"
        return None

    authority = r.get(ov, kp + ("authority",), str, check=check_authority)
    min_serial = r.get(ov, kp + ("min_serial",), int, default=0,
                       check=lambda v: None if 0 <= v < 2**53 else "must be 0 or a positive integer")
    tnet_text = r.get(ov, kp + ("transit_network",), str, default=DEFAULT_TRANSIT_NETWORK)
    tnet = IPv4Network(DEFAULT_TRANSIT_NETWORK)
    try:
        tnet = IPv4Network(tnet_text, strict=True)
        if not any(tnet.subnet_of(b) for b in PRIVATE_BLOCKS):
            r.error(kp + ("transit_network",), f"{tnet} is not a private range")
        elif network is not None and tnet.overlaps(network):
            r.error(kp + ("transit_network",), f"{tnet} overlaps the overlay {network}")
        elif network is not None and tnet.prefixlen != network.prefixlen:
            r.error(kp + ("transit_network",), f"must be as large as the overlay (/{network.prefixlen}): "
                                              "each member's transit address has its overlay host number")
    except ValueError as e:
        r.error(kp + ("transit_network",), f"'{tnet_text}' is not an IPv4 network: {e}")
    tif = r.get(ov, kp + ("transit_interface",), str, default="wgt0", check=check_ifname)
    if tif == wg.interface:
        r.error(kp + ("transit_interface",), f"must differ from wireguard.interface ({wg.interface})")
    port = r.get(ov, kp + ("port",), int, default=DEFAULT_OVERLAY_PORT, check=check_port)
    if port == wg.listen_port:
        r.error(kp + ("port",), f"{port} is wireguard.listen_port (the transit's)")
    most = wg.mtu - OVERLAY_OVERHEAD
    mtu = r.get(ov, kp + ("mtu",), int, default=most,
                check=lambda v: None if 1280 <= v <= most else
                f"must be between 1280 and {most} (wireguard.mtu {wg.mtu} minus {OVERLAY_OVERHEAD} for the "
                "transit's headers: a larger one fragments or black-holes)")
    if most < 1280 and "mtu" not in ov:
        r.error(("wireguard", "mtu"), f"{wg.mtu} leaves the overlay less than 1280 ({most}); use at least "
                                      f"{1280 + OVERLAY_OVERHEAD}")
    key_file = abs_path(r, ov, kp + ("private_key_file",), str(state_dir / "overlay.key"))
    if key_file == wg.private_key_file:
        r.error(kp + ("private_key_file",), "must differ from wireguard.private_key_file: the overlay's key "
                                           "is one the hub never sees")
    poll = float(r.get(ov, kp + ("roster_poll",), float, default=1.0,
                       check=lambda v: None if 0.2 <= v <= 60 else "must be between 0.2 and 60 seconds"))
    return OverlayConfig(mode=mode, authority=authority, min_serial=min_serial, transit_network=tnet,
                         transit_interface=tif, port=port, mtu=mtu, private_key_file=key_file, roster_poll=poll)


def _network(r: Reader, ov: dict[str, Any]) -> IPv4Network | None:
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


def _hub(r: Reader, top: dict[str, Any]) -> HubSpec | None:
    if "hub" not in top:
        r.error(("hub",), "is required on a spoke (the hub's public_key and endpoint)")
        return None
    h = r.section(top, ("hub",), {"public_key", "endpoint"} | HUB_RELAY_KEYS)
    key = r.get(h, ("hub", "public_key"), str, check=check_key)
    ep_text = r.get(h, ("hub", "endpoint"), str)
    endpoint = None
    if ep_text is not None:
        try:
            endpoint = parse_endpoint(ep_text)
        except ValueError as e:
            r.error(("hub", "endpoint"), f"'{ep_text}' {e}")
    tcp = hub_transport(r, h, ("hub",), endpoint)
    if key is None or endpoint is None:
        return None
    return HubSpec(public_key=key, endpoint=endpoint, **tcp)


def _hubs(r: Reader, top: dict[str, Any], overlay: OverlayConfig, network: IPv4Network | None) -> list[HubSpec]:
    """`hubs:`, a spoke's hubs in order of preference. More than one only in confidential mode:
    in routed mode a spoke takes overlay packets only from the hub holding the overlay's allowed
    IPs, so spokes on different hubs could not talk to each other."""
    if "hub" in top:
        r.error(("hubs",), "give either hub (one) or hubs (a list), not both")
        return []
    items = top.get("hubs")
    if not isinstance(items, list) or not items:
        r.error(("hubs",), "must be a list of hubs (name, public_key, endpoint, transit_network), "
                           "preferred first")
        return []
    if len(items) > 1 and not overlay.confidential:
        r.error(("hubs",), f"{len(items)} hubs: more than one hub needs overlay.mode: confidential (in "
                           "routed mode each spoke takes overlay packets only from the hub that holds the "
                           "overlay's addresses, so spokes on different hubs could not reach each other)")
        return []
    out: list[HubSpec] = []
    nets: list[IPv4Network] = []
    for i, item in enumerate(items):
        kp: KeyPath = ("hubs", i)
        if not isinstance(item, dict):
            r.error(kp, "must be a mapping with name, public_key, endpoint, transit_network")
            continue
        h = r.section({i: item}, kp, {"name", "public_key", "endpoint", "transit_network"} | HUB_RELAY_KEYS)
        if "transit_network" in h and not overlay.confidential:
            r.error(kp + ("transit_network",), "is for overlay.mode: confidential")
        name = r.get(h, kp + ("name",), str, default="hub" if i == 0 else f"hub{i + 1}", check=check_name)
        key = r.get(h, kp + ("public_key",), str, check=check_key)
        ep_text = r.get(h, kp + ("endpoint",), str)
        endpoint = None
        if ep_text is not None:
            try:
                endpoint = parse_endpoint(ep_text)
            except ValueError as e:
                r.error(kp + ("endpoint",), f"'{ep_text}' {e}")
        tnet: IPv4Network | None = None
        if "transit_network" in h:
            text = r.get(h, kp + ("transit_network",), str)
            try:
                tnet = IPv4Network(str(text), strict=True)
            except ValueError as e:
                r.error(kp + ("transit_network",), f"'{text}' is not an IPv4 network: {e}")
        elif i > 0:
            r.error(kp + ("transit_network",), "is required for every hub after the first (each hub has a "
                                              "transit network of its own; the hub's overlay.transit_network)")
        net = tnet or overlay.transit_network
        if tnet is not None:
            if not any(tnet.subnet_of(b) for b in PRIVATE_BLOCKS):
                r.error(kp + ("transit_network",), f"{tnet} is not a private range")
            elif network is not None and (tnet.overlaps(network) or tnet.prefixlen != network.prefixlen):
                r.error(kp + ("transit_network",), f"{tnet} must be as large as the overlay {network} and "
                                                  "apart from it")
        clash = next((j for j, other in enumerate(nets) if other.overlaps(net)), None)
        if clash is not None:
            r.error(kp + ("transit_network",), f"{net} overlaps hubs[{clash}]'s transit network: each hub "
                                              "needs its own")
        nets.append(net)
        if key is not None and any(o.public_key == key for o in out):
            r.error(kp + ("public_key",), "another hub in the list has this key")
        if any(o.name == name for o in out):
            r.error(kp + ("name",), f"another hub in the list is called {name}")
        tcp = hub_transport(r, h, kp, endpoint)
        if key is not None and endpoint is not None and name is not None:
            out.append(HubSpec(public_key=key, endpoint=endpoint, name=name, transit_network=tnet, **tcp))
    return out


def _probe(r: Reader, top: dict[str, Any]) -> ProbeConfig:
    p = r.section(top, ("probe",), {"interval", "window", "holddown"})
    interval = float(r.get(p, ("probe", "interval"), (int, float), default=0.2,
                           check=lambda v: None if 0.05 <= v <= 10 else "must be between 0.05 and 10 seconds"))
    window = float(r.get(p, ("probe", "window"), (int, float), default=1.0,
                         check=lambda v: None if 0.1 <= v <= 60 else "must be between 0.1 and 60 seconds"))
    if window < 2 * interval:
        r.error(("probe", "window"), f"{window:g}s must be at least two probe intervals ({2 * interval:g}s)")
    holddown = float(r.get(p, ("probe", "holddown"), (int, float), default=10.0,
                           check=lambda v: None if 0 <= v <= 3600 else "must be between 0 and 3600 seconds"))
    return ProbeConfig(interval=interval, window=window, holddown=holddown)


PEER_KEYS = {"name", "public_key", "address", "next_public_key"}


def _peers(r: Reader, top: dict[str, Any], peers_dir: Path, network: IPv4Network | None,
           hub_address: IPv4Address | None, problems: list[str]) -> list[PeerSpec]:
    entries: list[tuple[Reader, dict[str, Any], KeyPath, str | None]] = []
    inline = top.get("peers")
    if inline is not None:
        if not isinstance(inline, list):
            r.error(("peers",), f"must be a list of peers, got {kind_of(inline)}")
        else:
            for i, item in enumerate(inline):
                kp: KeyPath = ("peers", i)
                if not isinstance(item, dict):
                    r.error(kp, f"must be a mapping with name, public_key, address; got {kind_of(item)}")
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
            pr = Reader(psrc, problems)
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
        name = rd.get(item, kp + ("name",), str, default=default_name if default_name else MISSING,
                      check=check_name)
        key = rd.get(item, kp + ("public_key",), str, check=check_key)
        next_key = rd.get(item, kp + ("next_public_key",), str, default="", check=check_key) or None
        addr_text = rd.get(item, kp + ("address",), str)
        addr = in_overlay(rd, kp + ("address",), addr_text, network) if addr_text is not None else None
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


def _firewall(r: Reader, top: dict[str, Any], is_hub: bool, wg: WireGuardConfig) -> FirewallConfig:
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
            r.error(("firewall", "trusted_interfaces"), f"must be a list of interface names, got {kind_of(raw_t)}")
        else:
            for i, name in enumerate(raw_t):
                kp: KeyPath = ("firewall", "trusted_interfaces", i)
                if not isinstance(name, str) or not IFPATTERN_RE.match(name):
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


def _listen(r: Reader, top: dict[str, Any], key: str, *, enabled: bool, address: str, port: int) -> ListenConfig:
    m = r.section(top, (key,), {"enabled", "listen", "port", "max_connections", "max_connections_per_source"})
    en = r.get(m, (key, "enabled"), bool, default=enabled)

    addr = r.get(m, (key, "listen"), str, default=address, check=check_ip)
    p = r.get(m, (key, "port"), int, default=port, check=check_port)
    total = r.get(m, (key, "max_connections"), int, default=ListenConfig.max_connections, check=check_cap)
    per_source = r.get(m, (key, "max_connections_per_source"), int, default=min(total, ListenConfig.max_per_source),
                       check=check_cap)
    if per_source > total:
        r.error((key, "max_connections_per_source"), f"{per_source} is more than max_connections ({total})")
    return ListenConfig(enabled=en, address=addr, port=p, max_connections=total, max_per_source=per_source)
