"""What dvpn-relay should do on this node (pure): from dvpnd's config, the node's WireGuard key and
the spokes it carries, the relay's configuration, with the proof keys derived here so that the
relay never holds a WireGuard private key.

- A hub with `relay.enabled` listens for the spokes it has as WireGuard peers: the roster's
  transit keys in confidential mode, `peers` (and a key being rotated to) in routed mode.
- A spoke has one link per hub whose `transport` is tcp; WireGuard's peer endpoint for that hub is
  127.0.0.1:`relay_local_port(hub)` (the reconciler writes it), and the relay takes datagrams from
  WireGuard's own port only."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from dvpnd.config.model import Config
from dvpnd.relay.config import HubSide, Link, RelayConfig
from dvpnd.relay.protocol import auth_key, max_datagram, public_of
from dvpnd.wireguard.keytext import decode_key

CERT, KEY = "relay.crt", "relay.key"


def cert_paths(config: Config) -> tuple[Path, Path]:
    """The hub relay's certificate and key: the operator's, or the self-signed pair's place (the
    state directory, or `relay.self_signed_dir`: a relay in a container of its own shares that
    directory, never the state directory, which holds the WireGuard key)."""
    r = config.relay
    if r.cert is not None and r.key is not None:
        return r.cert, r.key
    d = r.self_signed_dir or config.state_dir
    return d / CERT, d / KEY


def render_relay(config: Config, private_key: str, wg_port: int | None, spoke_keys: Iterable[str] = (),
                 udp_endpoints: Mapping[str, str] | None = None,
                 active: Collection[str] = ()) -> RelayConfig | None:
    """The relay's configuration, or None when this node needs no relay. `wg_port` is WireGuard's
    listening port on this node (the device's, when the config leaves it to the system);
    `udp_endpoints`, hub key -> its resolved ip:port (for the probes of hubs on auto);
    `active`, the hubs on auto whose link delivers to WireGuard now (on TCP, or settling back)."""
    if not config.needs_relay or wg_port is None:
        return None
    priv = decode_key(private_key)
    me = public_of(priv)
    largest = max_datagram(config.wireguard.mtu)
    status = str(config.relay.status_file)
    if config.is_hub:
        r = config.relay
        cert, key = cert_paths(config)
        spokes = {}
        for k in spoke_keys:
            pub = decode_key(k)
            spokes[pub] = auth_key(priv, pub)
        return RelayConfig(hub=HubSide(address=r.address, port=r.port, cert=str(cert), key=str(key),
                                       wg_port=wg_port, largest=largest, hub_public=me, spokes=spokes,
                                       max_clients=r.max_clients, max_per_ip=r.max_per_ip, idle=r.idle,
                                       probe_port=r.probe_port),
                           status_file=status)
    links = []
    for h in config.tcp_hubs:
        hub_pub = decode_key(h.public_key)
        assert h.relay_url is not None
        links.append(Link(name=h.name, url=h.relay_url, fingerprint=h.relay_fingerprint,
                          ca=str(h.relay_ca) if h.relay_ca else None, local_port=config.relay_local_port(h),
                          wg_port=wg_port, spoke_public=me, hub_public=hub_pub, auth=auth_key(priv, hub_pub),
                          largest=largest, mode=h.transport, udp_endpoint=(udp_endpoints or {}).get(h.public_key),
                          udp_hold=config.relay.udp_holddown,
                          active=h.transport == "tcp" or h.public_key in active,
                          nudge=str(config.transit_address_via(h, config.hub_address) if config.confidential
                                    else config.hub_address)))
    return RelayConfig(links=tuple(links), status_file=status)
