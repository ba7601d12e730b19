"""What the confidential overlay's two layers should be on this node (pure).

    spoke-a wg0 (overlay key A)  ══ overlay WireGuard UDP, 10.89.0.11:51821 → 10.89.0.12:51821 ══  spoke-b wg0
      └ wgt0 (transit key a) ── hub wg0 (transit only: keys a, b, …; forwards that UDP only) ── wgt0 ┘

- The hub's only device is the transit: one peer per roster member (its transit key, its
  transit /32). It has no overlay key and no overlay address, so it can neither read what it
  forwards nor take part in the overlay.
- A spoke's transit device (`overlay.transit_interface`) has the hub as its one peer, for the
  transit network; its overlay device (`wireguard.interface`, what applications use) has every
  other member of the verified roster as a peer, by overlay key, for its overlay /32, reached
  at its transit address (through the path selector), with no persistent keepalive (the
  transit keeps the NAT state; N² keepalives would be the idle hub's whole load).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dvpnd.config.model import Config, HubSpec
from dvpnd.linkstate import LinkState
from dvpnd.overlay.paths import PeerPaths
from dvpnd.roster.model import Member, Roster
from dvpnd.wireguard.device import DesiredDevice, DesiredPeer


@dataclass(frozen=True)
class HubChoice:
    """A spoke with several hubs: the hub its overlay goes through (`active`), the hubs whose
    paths may stay where WireGuard's roaming put them (`usable`), and whether this is the first
    pass after a change of hub (`moved`: every peer is put on the active hub's path)."""

    active: str  # a hub's public key
    usable: frozenset[str]
    moved: bool = False
    bad: frozenset[tuple[str, str]] = frozenset()  # (member's overlay key, hub key): no answer that way
    straighten: frozenset[str] = frozenset()  # members (overlay keys) put on their first path once more


@dataclass(frozen=True)
class Membership:
    """This spoke in the roster: its record, or why it has none (then it has no overlay peers)."""

    member: Member | None
    problem: str | None = None


def own_membership(config: Config, roster: Roster | None, overlay_key: str) -> Membership:
    if roster is None:
        return Membership(None, "no verified roster yet")
    me = next((m for m in roster.members if m.overlay_key == overlay_key), None)
    if me is None:
        return Membership(None, f"this node's overlay key is not in roster serial {roster.serial}")
    if me.address != config.address:
        return Membership(None, f"roster serial {roster.serial} gives {me.name} the address {me.address}, "
                                f"the config says {config.address}")
    return Membership(me)


def transit_link(config: Config) -> LinkState:
    """The hub's wg0 or a spoke's transit device: its transit address (a spoke: one per hub), the
    outer MTU."""
    if config.is_hub or not config.hubs:
        addr = config.transit_address(config.address)
        return LinkState(up=True, mtu=config.wireguard.mtu,
                         addresses=frozenset({f"{addr}/{config.overlay.transit_network.prefixlen}"}))
    return LinkState(up=True, mtu=config.wireguard.mtu, addresses=frozenset(
        f"{config.transit_address_via(h, config.address)}/{config.hub_transit_network(h).prefixlen}"
        for h in config.hubs))


def overlay_link(config: Config) -> LinkState:
    return LinkState(up=True, mtu=config.overlay.mtu,
                     addresses=frozenset({f"{config.address}/{config.network.prefixlen}"}))


def render_hub_transit(config: Config, private_key: str, roster: Roster | None,
                       endpoint_hints: Mapping[str, str] | None = None) -> DesiredDevice:
    """The hub's device: the roster's members by transit key, nothing else (no roster: no peers)."""
    hints = endpoint_hints or {}
    peers: dict[str, DesiredPeer] = {}
    for m in roster.members if roster is not None else ():
        peers[m.transit_key] = DesiredPeer(
            public_key=m.transit_key, name=m.name,
            allowed_ips=frozenset({f"{config.transit_address(m.address)}/32"}),
            persistent_keepalive=config.wireguard.persistent_keepalive, endpoint_hint=hints.get(m.transit_key))
    return DesiredDevice(private_key=private_key, listen_port=config.wireguard.listen_port, peers=peers)


def render_spoke_transit(config: Config, private_key: str, endpoints: Mapping[str, str | None]) -> DesiredDevice:
    """A spoke's transit device: every hub (by key, its resolved endpoint in `endpoints`), each for
    its own transit network. With several hubs each keeps a live tunnel, so a failover needs no
    handshake with anything new."""
    peers: dict[str, DesiredPeer] = {}
    for h in config.hubs:
        peers[h.public_key] = DesiredPeer(public_key=h.public_key, name=h.name,
                                          allowed_ips=frozenset({str(config.hub_transit_network(h))}),
                                          endpoint=endpoints.get(h.public_key),
                                          persistent_keepalive=config.wireguard.persistent_keepalive)
    return DesiredDevice(private_key=private_key, listen_port=config.wireguard.listen_port, peers=peers)


def hub_order(config: Config, choice: HubChoice | None) -> tuple[HubSpec, ...]:
    """The hubs in the order their paths are offered: the active one first, then the usable ones,
    then the rest, each group in the config's order of preference."""
    hubs = config.hubs
    if choice is None:
        return hubs
    return tuple(sorted(hubs, key=lambda h: (h.public_key != choice.active, h.public_key not in choice.usable)))


def peer_paths(config: Config, member: Member, choice: HubChoice | None) -> PeerPaths:
    """`member`'s overlay endpoints, one per hub (its transit address behind each)."""
    port = config.overlay.port
    if not config.more_hubs:
        addr = config.transit_address_via(config.hubs[0], member.address) if config.hubs else \
            config.transit_address(member.address)
        return PeerPaths((f"{addr}:{port}",))
    order = hub_order(config, choice)
    if choice is None:
        return PeerPaths(tuple(f"{config.transit_address_via(h, member.address)}:{port}" for h in order))
    # a hub this member does not answer through goes last (a hub cut off from it only)
    cut = {h for m, h in choice.bad if m == member.overlay_key} if choice.bad else set()
    order = tuple(sorted(order, key=lambda h: h.public_key in cut))
    endpoints = tuple(f"{config.transit_address_via(h, member.address)}:{port}" for h in order)
    keep = frozenset(endpoints[:1]) if choice.moved or member.overlay_key in choice.straighten else frozenset(
        e for h, e in zip(order, endpoints, strict=True) if h.public_key in choice.usable and h.public_key not in cut)
    return PeerPaths(endpoints, keep)


def render_overlay(config: Config, private_key: str, roster: Roster | None, membership: Membership,
                   choice: HubChoice | None = None) -> DesiredDevice:
    """A spoke's overlay device: every other member, if this node is one itself."""
    peers: dict[str, DesiredPeer] = {}
    if roster is not None and membership.member is not None:
        for m in roster.members:
            if m.overlay_key == membership.member.overlay_key:
                continue
            peers[m.overlay_key] = DesiredPeer(public_key=m.overlay_key, name=m.name,
                                               allowed_ips=frozenset({f"{m.address}/32"}),
                                               persistent_keepalive=0, paths=peer_paths(config, m, choice))
    return DesiredDevice(private_key=private_key, listen_port=config.overlay.port, peers=peers)
