"""The WireGuard interface as an IP link: its address, MTU, up state; and IPv4 forwarding on the hub.

Both backends configure this the same way, through pyroute2. The address carries the
overlay's prefix, so the kernel's connected route sends the whole overlay into the
interface, where WireGuard's allowed IPs pick the peer (on a spoke: always the hub).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dvpnd.errors import BackendError
from dvpnd.linkstate import LinkChanges, LinkState, diff_link, render_link
from dvpnd.wireguard.links import get_link

__all__ = ["LinkChanges", "LinkState", "apply_link", "diff_link", "ensure_forwarding", "read_link", "render_link"]
log = logging.getLogger("dvpnd.link")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def read_link(ifname: str) -> LinkState | None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        link = get_link(ipr, ifname)
        if link is None:
            return None
        up = bool(link["flags"] & 1)  # IFF_UP
        mtu = int(link.get_attr("IFLA_MTU") or 0)
        addrs = frozenset(
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=link["index"], family=2)
        )
        return LinkState(up=up, mtu=mtu, addresses=addrs)


def apply_link(ifname: str, changes: LinkChanges) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise BackendError(f"interface {ifname} does not exist")
        i = idx[0]
        try:
            if changes.mtu is not None:
                ipr.link("set", index=i, mtu=changes.mtu)
            for cidr in sorted(changes.remove):
                addr, _, plen = cidr.partition("/")
                ipr.addr("del", index=i, address=addr, prefixlen=int(plen))
            for cidr in sorted(changes.add):
                addr, _, plen = cidr.partition("/")
                ipr.addr("add", index=i, address=addr, prefixlen=int(plen))
            if changes.up:
                ipr.link("set", index=i, state="up")
        except NetlinkError as e:
            raise BackendError(f"cannot configure {ifname}: {e}") from None


def ensure_forwarding(enabled: bool) -> bool:
    """Set net.ipv4.ip_forward in this network namespace; True if it was changed."""
    want = "1" if enabled else "0"
    try:
        if IP_FORWARD.read_text().strip() == want:
            return False
        IP_FORWARD.write_text(want + "\n")
    except OSError as e:
        raise BackendError(f"{IP_FORWARD}: cannot set IPv4 forwarding: {e.strerror}") from None
    return True
