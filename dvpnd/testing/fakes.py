"""Fakes of what the reconcile pass touches: the WireGuard device (behind the Backend protocol),
the interface (netif's read/apply) and the nftables table (nft's apply/read). Each models what
the real thing does with a change, and counts what it was asked."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING

from dvpnd import netif
from dvpnd.errors import BackendError
from dvpnd.firewall import nft
from dvpnd.firewall.ruleset import Json
from dvpnd.wireguard.device import DeviceChanges, DeviceState, PeerState
from dvpnd.wireguard.keys import decode_key, encode_key, public_key

if TYPE_CHECKING:
    import pytest


def render_get(state: DeviceState) -> str:
    """wireguard-go's reply to `get=1` for this state, in its order (what parse_get reads)."""
    from dvpnd.wireguard.uapi import b64_to_hex

    lines = [f"private_key={b64_to_hex(state.private_key)}"] if state.private_key else []
    lines.append(f"listen_port={state.listen_port}")
    for key, p in state.peers.items():
        hs = p.last_handshake or 0.0
        lines += [f"public_key={b64_to_hex(key)}", "preshared_key=" + "0" * 64, "protocol_version=1"]
        lines += [f"endpoint={p.endpoint}"] if p.endpoint else []
        lines += [f"last_handshake_time_sec={int(hs)}", f"last_handshake_time_nsec={int(hs % 1 * 1e9)}",
                  f"tx_bytes={p.tx_bytes}", f"rx_bytes={p.rx_bytes}",
                  f"persistent_keepalive_interval={p.persistent_keepalive}"]
        lines += [f"allowed_ip={cidr}" for cidr in sorted(p.allowed_ips)]
    return "\n".join([*lines, "errno=0"]) + "\n\n"


def render_netlink_get(state: DeviceState, ifname: str = "wg0", per_message: int = 2) -> list[bytes]:
    """The kernel's WG_CMD_GET_DEVICE replies for this state (generic netlink payloads), peers in
    its order and attribute order, `per_message` peers to a message (what parse_netlink_device and
    netlink.config_digest read)."""
    import base64
    import struct
    from ipaddress import ip_network

    from dvpnd.netlink import codec
    from dvpnd.wireguard import netlink as n

    def peer(p: PeerState) -> bytes:
        hs = p.last_handshake or 0.0
        parts = [codec.attr(n.WGPEER_A_PUBLIC_KEY, base64.b64decode(p.public_key)),
                 codec.attr(n.WGPEER_A_PRESHARED_KEY, bytes(32)),
                 codec.attr(n.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", int(hs), int(hs % 1 * 1e9))),
                 codec.u16(n.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, p.persistent_keepalive),
                 codec.attr(n.WGPEER_A_TX_BYTES, struct.pack("=Q", p.tx_bytes)),
                 codec.attr(n.WGPEER_A_RX_BYTES, struct.pack("=Q", p.rx_bytes)),
                 codec.u32(n.WGPEER_A_PROTOCOL_VERSION, 1)]
        if p.endpoint:
            host, _, port = p.endpoint.rpartition(":")
            parts.append(codec.attr(n.WGPEER_A_ENDPOINT, struct.pack("=H", n.AF_INET) + struct.pack(
                "!H4s8x", int(port), ip_network(host).network_address.packed)))
        nets = [ip_network(c) for c in sorted(p.allowed_ips)]
        ips = [codec.nested(0, codec.u16(n.WGALLOWEDIP_A_FAMILY, n.AF_INET),
                            codec.attr(n.WGALLOWEDIP_A_IPADDR, net.network_address.packed),
                            codec.u8(n.WGALLOWEDIP_A_CIDR_MASK, net.prefixlen)) for net in nets]
        return codec.nested(0, *parts, codec.nested(n.WGPEER_A_ALLOWEDIPS, *ips))

    head = (n.genl_header(n.WG_CMD_GET_DEVICE) + codec.u32(n.WGDEVICE_A_IFINDEX, 7)
            + codec.string(n.WGDEVICE_A_IFNAME, ifname))
    if state.private_key:
        head += codec.attr(n.WGDEVICE_A_PRIVATE_KEY, base64.b64decode(state.private_key))
    if state.public_key:
        head += codec.attr(n.WGDEVICE_A_PUBLIC_KEY, base64.b64decode(state.public_key))
    head += codec.u16(n.WGDEVICE_A_LISTEN_PORT, state.listen_port) + codec.u32(n.WGDEVICE_A_FWMARK, state.fwmark)
    peers = [peer(p) for p in state.peers.values()]
    chunks = [peers[i:i + per_message] for i in range(0, len(peers), per_message)] or [[]]
    return [(head if i == 0 else head[:4]) + codec.nested(n.WGDEVICE_A_PEERS, *c) for i, c in enumerate(chunks)]


class FakeBackend:
    """An in-memory WireGuard device: peers created, removed, allowed IPs replaced, as the kernel
    and wireguard-go do. With `deaf` set it takes writes without changing (a device that lies);
    `raw` says how it answers read_raw: "uapi" as wireguard-go does, "netlink" as the kernel
    does, None with no raw answer (read() only)."""

    name = "fake"

    def __init__(self, ifname: str = "wg0", raw: str | None = None):
        self.ifname = ifname
        self.state: DeviceState | None = None
        self.reads = self.writes = 0
        self.deaf = False
        self.raw = raw

    def create(self) -> None:
        self.state = DeviceState()

    def read(self, only: frozenset[str] | None = None) -> DeviceState:
        if self.state is None:
            raise BackendError(f"{self.ifname}: no such device")
        self.reads += 1
        if only is not None:
            return replace(self.state, peers={k: p for k, p in self.state.peers.items() if k in only})
        return self.state

    def read_raw(self) -> str | list[bytes] | None:
        if self.raw == "netlink":
            return render_netlink_get(self.read(), self.ifname)
        return render_get(self.read()) if self.raw == "uapi" else None

    def apply(self, changes: DeviceChanges) -> None:
        assert self.state is not None
        self.writes += 1
        if self.deaf:
            return
        s = self.state
        if changes.private_key is not None:
            s = replace(s, private_key=changes.private_key,
                        public_key=encode_key(public_key(decode_key(changes.private_key))))
        if changes.listen_port is not None:
            s = replace(s, listen_port=changes.listen_port)
        peers = dict(s.peers)
        for c in changes.peers:
            if c.remove:
                peers.pop(c.public_key, None)
                continue
            p = peers.get(c.public_key) or PeerState(public_key=c.public_key)
            if c.endpoint is not None:
                p = replace(p, endpoint=c.endpoint)
            if c.persistent_keepalive is not None:
                p = replace(p, persistent_keepalive=c.persistent_keepalive)
            if c.allowed_ips is not None:
                p = replace(p, allowed_ips=c.allowed_ips)
            peers[c.public_key] = p
        self.state = replace(s, peers=peers)

    def delete(self) -> None:
        self.state = None


class FakeLinks:
    """netif's read_link/apply_link/ensure_forwarding on an in-memory interface."""

    def __init__(self) -> None:
        self.link = netif.LinkState(up=False, mtu=1500, addresses=frozenset())
        self.applies = 0
        self.forwarding = False

    def read_link(self, ifname: str) -> netif.LinkState | None:
        return self.link

    def apply_link(self, ifname: str, changes: netif.LinkChanges) -> None:
        self.applies += 1
        addrs = (self.link.addresses - changes.remove) | changes.add
        self.link = netif.LinkState(up=self.link.up or changes.up, mtu=changes.mtu or self.link.mtu, addresses=addrs)

    def ensure_forwarding(self, enabled: bool) -> bool:
        changed, self.forwarding = self.forwarding != enabled, enabled
        return changed


class FakeNft:
    """libnftables for one table: a batch that adds, deletes and rebuilds `inet dvpn` leaves the
    table's objects; `list table` shows them with handles, as the kernel does."""

    def __init__(self) -> None:
        self.table: list[Json] | None = None
        self.batches: list[Json] = []
        self.reject: str | None = None

    def apply_batch(self, batch: Json) -> None:
        if self.reject:
            raise nft.FirewallError(self.reject, batch)
        self.batches.append(batch)
        objs = []
        for cmd in batch["nftables"]:
            if "add" in cmd:
                objs.append(copy.deepcopy(cmd["add"]))
        self.table = [{k: dict(v, handle=i) if isinstance(v, dict) else v for k, v in o.items()}
                      for i, o in enumerate(objs)]

    def read_table(self) -> Json | None:
        return None if self.table is None else {"nftables": copy.deepcopy(self.table)}

    def remove_table(self) -> None:
        self.table = None


def install(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeLinks, FakeNft]:
    """Put the link and nftables fakes where the reconcile pass looks for them."""
    links, fw = FakeLinks(), FakeNft()
    for name in ("read_link", "apply_link", "ensure_forwarding"):
        monkeypatch.setattr(netif, name, getattr(links, name))
    for name in ("apply_batch", "read_table", "remove_table"):
        monkeypatch.setattr(nft, name, getattr(fw, name))
    return links, fw

