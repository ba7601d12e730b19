"""The kernel WireGuard's generic netlink messages (pure): building a SET from a diff, parsing a
GET. pyroute2 0.7.2 has the peer flag values wrong, so the kernel's own values are used."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

from dvpnd.wireguard.device import DeviceChanges, DeviceState, PeerState, normalize_cidr

# From the kernel's include/uapi/linux/wireguard.h.
WGDEVICE_F_REPLACE_PEERS = 1 << 0
WGPEER_F_REMOVE_ME = 1 << 0
WGPEER_F_REPLACE_ALLOWEDIPS = 1 << 1
WGPEER_F_UPDATE_ONLY = 1 << 2
# Peers per netlink SET message; wireguard-tools also splits big devices over messages.
NETLINK_PEERS_PER_MESSAGE = 64
# Linux's address families, as the messages carry them (no socket module in a pure codec)
AF_INET, AF_INET6 = 2, 10


def build_netlink_set(ifname: str, changes: DeviceChanges) -> list[list[list[Any]]]:
    """Attribute lists for WG_CMD_SET_DEVICE messages (pure), peers split over messages."""
    head: list[list[Any]] = [["WGDEVICE_A_IFNAME", ifname]]
    if changes.private_key is not None:
        head.append(["WGDEVICE_A_PRIVATE_KEY", {"value": changes.private_key}])
    if changes.listen_port is not None:
        head.append(["WGDEVICE_A_LISTEN_PORT", changes.listen_port])
    peer_attrs: list[dict[str, Any]] = []
    for p in changes.peers:
        attrs: list[list[Any]] = [["WGPEER_A_PUBLIC_KEY", {"value": p.public_key}]]
        flags = 0
        if p.remove:
            flags |= WGPEER_F_REMOVE_ME
        else:
            if not p.create:
                flags |= WGPEER_F_UPDATE_ONLY
            if p.allowed_ips is not None:
                flags |= WGPEER_F_REPLACE_ALLOWEDIPS
            if p.endpoint is not None:
                host, _, port = p.endpoint.rpartition(":")
                attrs.append(["WGPEER_A_ENDPOINT", {"addr": host.strip("[]"), "port": int(port)}])
            if p.persistent_keepalive is not None:
                attrs.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", p.persistent_keepalive])
            if p.allowed_ips is not None:
                ips = []
                for cidr in sorted(p.allowed_ips):
                    net = ip_network(cidr)
                    family = AF_INET6 if net.version == 6 else AF_INET
                    ips.append({"attrs": [["WGALLOWEDIP_A_FAMILY", family],
                                          ["WGALLOWEDIP_A_IPADDR", net.network_address.packed],
                                          ["WGALLOWEDIP_A_CIDR_MASK", net.prefixlen]]})
                attrs.append(["WGPEER_A_ALLOWEDIPS", ips])
        attrs.append(["WGPEER_A_FLAGS", flags])
        peer_attrs.append({"attrs": attrs})
    if not peer_attrs:
        return [head]
    messages = []
    for i in range(0, len(peer_attrs), NETLINK_PEERS_PER_MESSAGE):
        chunk = peer_attrs[i:i + NETLINK_PEERS_PER_MESSAGE]
        # Device attributes go once, in the first message.
        attrs0 = head if i == 0 else head[:1]
        messages.append(attrs0 + [["WGDEVICE_A_PEERS", chunk]])
    return messages


def parse_netlink_device(msgs: list[Any]) -> DeviceState:
    """A DeviceState from WG_CMD_GET_DEVICE replies (a big device spans several messages)."""
    private_key = public = None
    listen_port = fwmark = 0
    peers: dict[str, PeerState] = {}
    for msg in msgs:
        pk = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if pk is not None:
            private_key = _key_text(pk)
        pub = msg.get_attr("WGDEVICE_A_PUBLIC_KEY")
        if pub is not None:
            public = _key_text(pub)
        listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or listen_port
        fwmark = msg.get_attr("WGDEVICE_A_FWMARK") or fwmark
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
            key = _key_text(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
            ep = peer.get_attr("WGPEER_A_ENDPOINT")
            endpoint = None
            if ep is not None and ep.get("addr") and ep.get("port"):
                addr = ep["addr"]
                endpoint = f"[{addr}]:{ep['port']}" if ":" in addr else f"{addr}:{ep['port']}"
            hs = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            handshake = None
            if hs is not None and (hs.get("tv_sec") or hs.get("tv_nsec")):
                handshake = hs["tv_sec"] + hs["tv_nsec"] / 1e9
            ips = set()
            for aip in peer.get_attr("WGPEER_A_ALLOWEDIPS") or []:
                if aip.get("addr"):
                    ips.add(normalize_cidr(aip["addr"]))
            prev = peers.get(key)
            if prev is not None:  # a peer continued from the previous message
                ips |= prev.allowed_ips
            peers[key] = PeerState(
                public_key=key, allowed_ips=frozenset(ips), endpoint=endpoint or (prev.endpoint if prev else None),
                persistent_keepalive=peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
                last_handshake=handshake, rx_bytes=peer.get_attr("WGPEER_A_RX_BYTES") or 0,
                tx_bytes=peer.get_attr("WGPEER_A_TX_BYTES") or 0,
            )
    return DeviceState(private_key=private_key, public_key=public, listen_port=listen_port,
                       fwmark=fwmark, peers=peers)


def _key_text(attr: Any) -> str:
    """pyroute2 decodes keys to base64 bytes (0.7) or a dict with 'value'; normalize to str."""
    value = attr.get("value") if isinstance(attr, dict) else attr
    if isinstance(value, bytes):
        value = value.decode("ascii")
    return str(value)
