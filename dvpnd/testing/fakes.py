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


class FakeBackend:
    """An in-memory WireGuard device: peers created, removed, allowed IPs replaced, as the kernel
    and wireguard-go do. With `deaf` set it takes writes without changing (a device that lies);
    with `text` set it answers read_text as wireguard-go does (else as the kernel: None)."""

    name = "fake"

    def __init__(self, ifname: str = "wg0", text: bool = False):
        self.ifname = ifname
        self.state: DeviceState | None = None
        self.reads = self.writes = 0
        self.deaf = False
        self.text = text

    def create(self) -> None:
        self.state = DeviceState()

    def read(self, only: frozenset[str] | None = None) -> DeviceState:
        if self.state is None:
            raise BackendError(f"{self.ifname}: no such device")
        self.reads += 1
        if only is not None:
            return replace(self.state, peers={k: p for k, p in self.state.peers.items() if k in only})
        return self.state

    def read_text(self) -> str | None:
        return render_get(self.read()) if self.text else None

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

