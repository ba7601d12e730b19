"""The relay's configuration (pure): what dvpnd writes for `dvpn-relay` (JSON, 0600, in dvpnd's
runtime directory) and the relay reads at start and on SIGHUP.

It carries no WireGuard private key: the hub side gets, per spoke it carries, the spoke's public
key and the proof key K (see protocol.py); a spoke side gets its own K per hub. A relay with its
file stolen can pass the hub's relay check as those spokes, and nothing more: WireGuard still
refuses what their keys did not encrypt."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any


class RelayConfigError(ValueError):
    pass


@dataclass(frozen=True)
class HubSide:
    """The hub's WebSocket listener: TLS on `port`, each spoke relayed to WireGuard on loopback."""

    address: str
    port: int
    cert: str
    key: str
    wg_port: int
    largest: int  # the largest datagram the transit allows (protocol.max_datagram)
    hub_public: bytes
    spokes: dict[bytes, bytes]  # spoke public key -> K
    max_clients: int = 1024
    max_per_ip: int = 16
    idle: float = 75.0  # seconds without a message from the spoke (WireGuard's keepalive: 25 s)
    linger: float = 120.0  # seconds a spoke's UDP socket outlives its connection (a reconnect keeps the endpoint)
    queue: int = 128  # datagrams waiting for one slow spoke, beyond which they are dropped (UDP semantics)
    stall: float = 10.0  # seconds one send to a spoke may wait before the spoke is closed as not reading
    probe_port: int = 51829  # UDP: the probes the firewall redirects from WireGuard's port (transport: auto)


@dataclass(frozen=True)
class Link:
    """One hub reached over TCP: WireGuard's peer endpoint is 127.0.0.1:`local_port`."""

    name: str
    url: str  # wss://host:port/dvpn/relay/v1
    fingerprint: str | None  # sha256 of the hub's certificate (hex), pinned; or
    ca: str | None  # a CA file to verify the hub's certificate with, by the URL's host name
    local_port: int
    wg_port: int  # WireGuard's own port on this node (the only source the link accepts)
    spoke_public: bytes
    hub_public: bytes
    auth: bytes  # K
    largest: int
    mode: str = "tcp"  # tcp: always over the WebSocket; auto: probe UDP, connect while UDP fails
    udp_endpoint: str | None = None  # auto: the hub's WireGuard ip:port, where the probes go
    udp_hold: float = 30.0  # auto: UDP answered this long before dvpnd goes back to it
    active: bool = True  # auto: dvpnd has WireGuard on this link now (else what arrives is dropped)
    nudge: str | None = None  # the hub's address inside the tunnel: one empty datagram there after each connect


@dataclass(frozen=True)
class RelayConfig:
    hub: HubSide | None = None
    links: tuple[Link, ...] = ()
    status_file: str | None = None


def _flag(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{where}: {v!r} is not true or false")
    return v


def _address(v: Any, where: str) -> str | None:
    if v is None:
        return None
    try:
        return str(ip_address(str(v)))
    except ValueError:
        raise ValueError(f"{where}: {v!r} is not an IP address") from None


def _b64(v: Any, where: str) -> bytes:
    try:
        raw = base64.b64decode(str(v), validate=True)
    except (binascii.Error, ValueError):
        raise RelayConfigError(f"{where}: not base64") from None
    if len(raw) != 32:
        raise RelayConfigError(f"{where}: {len(raw)} bytes, not 32")
    return raw


def _enc(b: bytes) -> str:
    return base64.b64encode(b).decode()


def parse(doc: Any, origin: str) -> RelayConfig:
    """The relay's configuration from its JSON document; RelayConfigError names the key."""
    if not isinstance(doc, dict):
        raise RelayConfigError(f"{origin}: not a JSON object")
    hub = None
    try:
        if doc.get("hub"):
            h = doc["hub"]
            hub = HubSide(address=str(h["address"]), port=int(h["port"]), cert=str(h["cert"]), key=str(h["key"]),
                          wg_port=int(h["wg_port"]), largest=int(h["largest"]),
                          hub_public=_b64(h["hub_public"], f"{origin}: hub.hub_public"),
                          spokes={_b64(k, f"{origin}: hub.spokes key"): _b64(v, f"{origin}: hub.spokes[{k}]")
                                  for k, v in dict(h.get("spokes", {})).items()},
                          **{k: type(getattr(HubSide, k))(h[k]) for k in ("max_clients", "max_per_ip", "idle",
                                                                          "linger", "queue", "stall",
                                                                          "probe_port") if k in h})
        links = tuple(
            Link(name=str(x["name"]), url=str(x["url"]), fingerprint=x.get("fingerprint"), ca=x.get("ca"),
                 local_port=int(x["local_port"]), wg_port=int(x["wg_port"]),
                 spoke_public=_b64(x["spoke_public"], f"{origin}: links[{i}].spoke_public"),
                 hub_public=_b64(x["hub_public"], f"{origin}: links[{i}].hub_public"),
                 auth=_b64(x["auth"], f"{origin}: links[{i}].auth"), largest=int(x["largest"]),
                 mode=str(x.get("mode", "tcp")), udp_endpoint=x.get("udp_endpoint"),
                 udp_hold=float(x.get("udp_hold", 30.0)), active=_flag(x.get("active", True), f"links[{i}].active"),
                 nudge=_address(x.get("nudge"), f"links[{i}].nudge"))
            for i, x in enumerate(doc.get("links", [])))
        for i, x in enumerate(links):
            for k in ("fingerprint", "ca", "udp_endpoint"):
                if getattr(x, k) is not None and not isinstance(getattr(x, k), str):
                    raise ValueError(f"links[{i}].{k}: not a string")
    except KeyError as e:
        raise RelayConfigError(f"{origin}: missing key {e}") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, RelayConfigError):
            raise
        raise RelayConfigError(f"{origin}: {e}") from None
    for x in links:
        if x.mode not in ("tcp", "auto"):
            raise RelayConfigError(f"{origin}: link {x.name}: mode {x.mode!r} is not tcp or auto")
        if not x.url.startswith("wss://"):
            raise RelayConfigError(f"{origin}: link {x.name}: url {x.url!r} is not wss://")
        if not x.fingerprint and not x.ca:
            raise RelayConfigError(f"{origin}: link {x.name}: neither a certificate fingerprint nor a CA file")
    return RelayConfig(hub=hub, links=links, status_file=doc.get("status_file"))


def render(config: RelayConfig) -> dict[str, Any]:
    """The JSON document of a configuration (what dvpnd writes; parse(render(c)) == c)."""
    doc: dict[str, Any] = {}
    if config.hub is not None:
        h = config.hub
        doc["hub"] = {"address": h.address, "port": h.port, "cert": h.cert, "key": h.key, "wg_port": h.wg_port,
                      "largest": h.largest, "hub_public": _enc(h.hub_public),
                      "spokes": {_enc(k): _enc(v) for k, v in sorted(h.spokes.items())},
                      "max_clients": h.max_clients, "max_per_ip": h.max_per_ip, "idle": h.idle, "linger": h.linger,
                      "queue": h.queue, "stall": h.stall, "probe_port": h.probe_port}
    doc["links"] = [{"name": x.name, "url": x.url, "fingerprint": x.fingerprint, "ca": x.ca,
                     "local_port": x.local_port, "wg_port": x.wg_port, "spoke_public": _enc(x.spoke_public),
                     "hub_public": _enc(x.hub_public), "auth": _enc(x.auth), "largest": x.largest,
                     "mode": x.mode, "udp_endpoint": x.udp_endpoint, "udp_hold": x.udp_hold,
                     "active": x.active, "nudge": x.nudge}
                    for x in config.links]
    if config.status_file:
        doc["status_file"] = config.status_file
    return doc
