"""The kernel WireGuard's generic netlink messages (pure): building a SET from a diff, parsing a
GET, as the bytes the kernel reads and writes (dvpnd.netlink.codec), with the flag values of the
kernel's include/uapi/linux/wireguard.h (pyroute2 0.7.2 had them wrong)."""

from __future__ import annotations

import hashlib
import struct
from ipaddress import ip_address, ip_network

from dvpnd.netlink import codec
from dvpnd.wireguard.device import DeviceChanges, DeviceState, PeerState, normalize_cidr
from dvpnd.wireguard.keytext import decode_key, encode_key

WG_GENL_NAME, WG_GENL_VERSION = "wireguard", 1
WG_CMD_GET_DEVICE, WG_CMD_SET_DEVICE = 0, 1
(WGDEVICE_A_IFINDEX, WGDEVICE_A_IFNAME, WGDEVICE_A_PRIVATE_KEY, WGDEVICE_A_PUBLIC_KEY, WGDEVICE_A_FLAGS,
 WGDEVICE_A_LISTEN_PORT, WGDEVICE_A_FWMARK, WGDEVICE_A_PEERS) = range(1, 9)
(WGPEER_A_PUBLIC_KEY, WGPEER_A_PRESHARED_KEY, WGPEER_A_FLAGS, WGPEER_A_ENDPOINT,
 WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, WGPEER_A_LAST_HANDSHAKE_TIME, WGPEER_A_RX_BYTES, WGPEER_A_TX_BYTES,
 WGPEER_A_ALLOWEDIPS, WGPEER_A_PROTOCOL_VERSION) = range(1, 11)
WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGALLOWEDIP_A_CIDR_MASK = 1, 2, 3
WGDEVICE_F_REPLACE_PEERS = 1 << 0
WGPEER_F_REMOVE_ME = 1 << 0
WGPEER_F_REPLACE_ALLOWEDIPS = 1 << 1
WGPEER_F_UPDATE_ONLY = 1 << 2
# Peers per netlink SET message; wireguard-tools also splits big devices over messages.
NETLINK_PEERS_PER_MESSAGE = 64
# Linux's address families, as the messages carry them
AF_INET, AF_INET6 = 2, 10
_GENL = struct.Struct("=BBH")
_TIMESPEC = struct.Struct("=qq")
_FAMILY = struct.Struct("=H")  # a sockaddr's family, in host order; the rest in network order:
_SIN = struct.Struct("!H4s8x")  # sockaddr_in: port, address, padding
_SIN6 = struct.Struct("!HI16sI")  # sockaddr_in6: port, flow info, address, scope id


def genl_header(cmd: int) -> bytes:
    return _GENL.pack(cmd, WG_GENL_VERSION, 0)


def build_netlink_get(ifname: str) -> bytes:
    """The payload of a WG_CMD_GET_DEVICE dump request for `ifname`."""
    return genl_header(WG_CMD_GET_DEVICE) + codec.string(WGDEVICE_A_IFNAME, ifname)


def _v4(text: str) -> bytes | None:
    """A dotted quad's four bytes, None for anything else (the common case without ipaddress's
    parser: a 1,000-peer device has 2,000 addresses to pack)."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and (p[0] != "0" or p == "0") for p in parts):
        return None
    try:
        return bytes(int(p) for p in parts)
    except ValueError:  # (an octet over 255)
        return None


def _endpoint(endpoint: str) -> bytes:
    host, _, port = endpoint.rpartition(":")
    raw = _v4(host)
    if raw is not None:
        return _FAMILY.pack(AF_INET) + _SIN.pack(int(port), raw)
    addr = ip_address(host.strip("[]"))
    if addr.version == 6:
        return _FAMILY.pack(AF_INET6) + _SIN6.pack(int(port), 0, addr.packed, 0)
    return _FAMILY.pack(AF_INET) + _SIN.pack(int(port), addr.packed)


_V4_FAMILY = codec.u16(WGALLOWEDIP_A_FAMILY, AF_INET)
_V4_HOST = codec.u8(WGALLOWEDIP_A_CIDR_MASK, 32)


def _allowed_ip(cidr: str) -> bytes:
    host, _, plen = cidr.partition("/")
    raw = _v4(host) if plen == "32" else None
    if raw is not None:  # (a spoke's /32, the common case)
        return codec.nested(0, _V4_FAMILY, codec.attr(WGALLOWEDIP_A_IPADDR, raw), _V4_HOST)
    net = ip_network(cidr)
    return codec.nested(0, codec.u16(WGALLOWEDIP_A_FAMILY, AF_INET6 if net.version == 6 else AF_INET),
                        codec.attr(WGALLOWEDIP_A_IPADDR, net.network_address.packed),
                        codec.u8(WGALLOWEDIP_A_CIDR_MASK, net.prefixlen))


def build_netlink_set(ifname: str, changes: DeviceChanges) -> list[bytes]:
    """Payloads of WG_CMD_SET_DEVICE messages (pure), peers split over messages."""
    name = codec.string(WGDEVICE_A_IFNAME, ifname)
    head = name
    if changes.private_key is not None:
        head += codec.attr(WGDEVICE_A_PRIVATE_KEY, decode_key(changes.private_key))
    if changes.listen_port is not None:
        head += codec.u16(WGDEVICE_A_LISTEN_PORT, changes.listen_port)
    peers: list[bytes] = []
    for p in changes.peers:
        parts = [codec.attr(WGPEER_A_PUBLIC_KEY, decode_key(p.public_key))]
        flags = 0
        if p.remove:
            flags |= WGPEER_F_REMOVE_ME
        else:
            if not p.create:
                flags |= WGPEER_F_UPDATE_ONLY
            if p.allowed_ips is not None:
                flags |= WGPEER_F_REPLACE_ALLOWEDIPS
            if p.endpoint is not None:
                parts.append(codec.attr(WGPEER_A_ENDPOINT, _endpoint(p.endpoint)))
            if p.persistent_keepalive is not None:
                parts.append(codec.u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, p.persistent_keepalive))
            if p.allowed_ips is not None:
                parts.append(codec.nested(WGPEER_A_ALLOWEDIPS, *(_allowed_ip(c) for c in sorted(p.allowed_ips))))
        parts.append(codec.u32(WGPEER_A_FLAGS, flags))
        peers.append(codec.nested(0, *parts))
    if not peers:
        return [genl_header(WG_CMD_SET_DEVICE) + head]
    messages = []
    for i in range(0, len(peers), NETLINK_PEERS_PER_MESSAGE):
        # Device attributes go once, in the first message.
        messages.append(genl_header(WG_CMD_SET_DEVICE) + (head if i == 0 else name)
                        + codec.nested(WGDEVICE_A_PEERS, *peers[i:i + NETLINK_PEERS_PER_MESSAGE]))
    return messages


def _parse_endpoint(raw: bytes) -> str | None:
    family = _FAMILY.unpack_from(raw)[0] if len(raw) >= 2 else 0
    if family == AF_INET and len(raw) >= 2 + _SIN.size:
        port, a = _SIN.unpack_from(raw, 2)
        return f"{a[0]}.{a[1]}.{a[2]}.{a[3]}:{port}" if port else None
    if family == AF_INET6 and len(raw) >= 2 + _SIN6.size:
        port, _flow, addr, _scope = _SIN6.unpack_from(raw, 2)
        return f"[{ip_address(addr)}]:{port}" if port else None
    return None


def _cidr(raw: bytes, prefixlen: int) -> str:
    """An allowed IP as the text the diff compares (normalize_cidr's form)."""
    if len(raw) == 4 and prefixlen == 32:  # (the common case, in the kernel's form already)
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}/32"
    return normalize_cidr(f"{ip_address(raw)}/{prefixlen}")


_KEY_ATTR = codec.attr(WGPEER_A_PUBLIC_KEY, bytes(32))[:4]  # the header the kernel puts first in a peer


def parse_netlink_device(payloads: list[bytes], only: frozenset[str] | None = None) -> DeviceState:
    """A DeviceState from WG_CMD_GET_DEVICE replies' payloads (a big device spans several); with
    `only`, only those peers (by base64 key), the others skipped without decoding."""
    wanted = {decode_key(k) for k in only} if only is not None else None
    private_key = public = None
    listen_port = fwmark = 0
    peers: dict[str, PeerState] = {}
    for payload in payloads:
        dev = codec.attr_map(payload, _GENL.size)
        if WGDEVICE_A_PRIVATE_KEY in dev:
            private_key = encode_key(dev[WGDEVICE_A_PRIVATE_KEY])
        if WGDEVICE_A_PUBLIC_KEY in dev:
            public = encode_key(dev[WGDEVICE_A_PUBLIC_KEY])
        if WGDEVICE_A_LISTEN_PORT in dev:
            listen_port = codec.get_u16(dev[WGDEVICE_A_LISTEN_PORT]) or listen_port
        if WGDEVICE_A_FWMARK in dev:
            fwmark = codec.get_u32(dev[WGDEVICE_A_FWMARK]) or fwmark
        for raw_peer in codec.attr_list(dev.get(WGDEVICE_A_PEERS, b"")):
            if wanted is not None and raw_peer[:4] == _KEY_ATTR and raw_peer[4:36] not in wanted:
                continue
            peer = codec.attr_map(raw_peer)
            if wanted is not None and peer[WGPEER_A_PUBLIC_KEY] not in wanted:
                continue
            key = encode_key(peer[WGPEER_A_PUBLIC_KEY])
            ep = peer.get(WGPEER_A_ENDPOINT)
            endpoint = _parse_endpoint(ep) if ep else None
            handshake = None
            if WGPEER_A_LAST_HANDSHAKE_TIME in peer:
                sec, nsec = _TIMESPEC.unpack_from(peer[WGPEER_A_LAST_HANDSHAKE_TIME])
                if sec or nsec:
                    handshake = sec + nsec / 1e9
            ips = set()
            for raw_ip in codec.attr_list(peer.get(WGPEER_A_ALLOWEDIPS, b"")):
                a = codec.attr_map(raw_ip)
                if WGALLOWEDIP_A_IPADDR in a and WGALLOWEDIP_A_CIDR_MASK in a:
                    ips.add(_cidr(a[WGALLOWEDIP_A_IPADDR], a[WGALLOWEDIP_A_CIDR_MASK][0]))
            prev = peers.get(key)
            if prev is not None:  # a peer continued from the previous message
                ips |= prev.allowed_ips
            ka = peer.get(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL)
            rx, tx = peer.get(WGPEER_A_RX_BYTES), peer.get(WGPEER_A_TX_BYTES)
            peers[key] = PeerState(
                public_key=key, allowed_ips=frozenset(ips), endpoint=endpoint or (prev.endpoint if prev else None),
                persistent_keepalive=codec.get_u16(ka) if ka else 0, last_handshake=handshake,
                rx_bytes=codec.get_u64(rx) if rx else 0, tx_bytes=codec.get_u64(tx) if tx else 0,
            )
    return DeviceState(private_key=private_key, public_key=public, listen_port=listen_port,
                       fwmark=fwmark, peers=peers)


# what a GET says the device did, not what it was told: handshakes and byte counters
_COUNTERS = frozenset({WGPEER_A_LAST_HANDSHAKE_TIME, WGPEER_A_RX_BYTES, WGPEER_A_TX_BYTES})


def config_digest(payloads: list[bytes]) -> bytes:
    """A digest of what WG_CMD_GET_DEVICE replies say of the device's configuration: two reads
    with the same digest describe the same device to a reconcile, whatever their handshakes and
    counters. The kernel lists peers in a stable order (the order they were added), so the bytes
    are taken as they come, less the counters: no object per peer, a fraction of a parse."""
    h = hashlib.blake2b(digest_size=32)
    for payload in payloads:
        for kind, data in codec.attrs(payload, _GENL.size):
            if kind != WGDEVICE_A_PEERS:
                h.update(_GENL.pack(kind, 0, len(data)))
                h.update(data)
                continue
            for raw_peer in codec.attr_list(data):
                h.update(b"\xffpeer")
                for pkind, pdata in codec.attrs(raw_peer):
                    if pkind not in _COUNTERS:
                        h.update(_GENL.pack(pkind, 0, len(pdata)))
                        h.update(pdata)
    return h.digest()
