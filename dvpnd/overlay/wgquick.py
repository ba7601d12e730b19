"""The two wg-quick files a member without dvpnd (an operator's laptop) needs to join the
confidential overlay with plain WireGuard (pure). The private keys stay where they are: each file
loads its key from a file on that machine (PostUp), so the output can be mailed or printed.

Such a member has the roster of the moment it was printed: a later member is not in its files,
and a removed one stays until they are printed again."""

from __future__ import annotations

from ipaddress import IPv4Network

from dvpnd.config.model import DEFAULT_MTU, DEFAULT_OVERLAY_PORT, OVERLAY_OVERHEAD
from dvpnd.roster.model import Member, Roster


def _transit(roster: Roster, transit: IPv4Network, m: Member) -> str:
    return str(transit.network_address + (int(m.address) - int(roster.network.network_address)))


def render_wg_quick(roster: Roster, me: Member, hub_key: str, hub_endpoint: str, transit: IPv4Network,
                    port: int = DEFAULT_OVERLAY_PORT, mtu: int = DEFAULT_MTU) -> dict[str, str]:
    """{file name: content} for the transit (dvpn-transit.conf) and the overlay (dvpn.conf)."""
    t = [
        f"# dvpn transit for {me.name}: the tunnel to the hub (roster serial {roster.serial})",
        "[Interface]",
        f"Address = {_transit(roster, transit, me)}/{transit.prefixlen}",
        f"MTU = {mtu}",
        "PostUp = wg set %i private-key /etc/wireguard/dvpn-transit.key",
        "",
        "[Peer]",
        f"PublicKey = {hub_key}",
        f"Endpoint = {hub_endpoint}",
        f"AllowedIPs = {transit}",
        "PersistentKeepalive = 25",
    ]
    o = [
        f"# dvpn overlay for {me.name}: end to end with every other member (roster serial {roster.serial});",
        "# bring up dvpn-transit first. Print again after a roster change.",
        "[Interface]",
        f"Address = {me.address}/{roster.network.prefixlen}",
        f"MTU = {mtu - OVERLAY_OVERHEAD}",
        f"ListenPort = {port}",
        "PostUp = wg set %i private-key /etc/wireguard/dvpn-overlay.key",
    ]
    for m in roster.members:
        if m.name == me.name:
            continue
        o += ["", f"# {m.name}", "[Peer]", f"PublicKey = {m.overlay_key}",
              f"Endpoint = {_transit(roster, transit, m)}:{port}", f"AllowedIPs = {m.address}/32"]
    return {"dvpn-transit.conf": "\n".join(t) + "\n", "dvpn.conf": "\n".join(o) + "\n"}
