"""The WireGuard interface as an IP link: its address, MTU, up state; and IPv4 forwarding on the hub.

Both backends configure this the same way, over rtnetlink (dvpnd.netlink). The address carries the
overlay's prefix, so the kernel's connected route sends the whole overlay into the
interface, where WireGuard's allowed IPs pick the peer (on a spoke: always the hub).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dvpnd.errors import BackendError
from dvpnd.linkstate import LinkChanges, LinkState, diff_link, render_link
from dvpnd.netlink import rtnl

__all__ = ["LinkChanges", "LinkState", "apply_link", "diff_link", "ensure_forwarding", "read_link", "render_link"]
log = logging.getLogger("dvpnd.link")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def read_link(ifname: str) -> LinkState | None:
    try:
        with rtnl.route() as nl:
            link = rtnl.get_link(nl, ifname)
            if link is None:
                return None
            addrs = rtnl.get_addresses(nl, link.index)
    except OSError as e:
        raise BackendError(f"cannot read {ifname}: {e.strerror}") from None
    return LinkState(up=link.up, mtu=link.mtu, addresses=addrs)


def apply_link(ifname: str, changes: LinkChanges) -> None:
    with rtnl.route() as nl:
        try:
            link = rtnl.get_link(nl, ifname)
        except OSError as e:
            raise BackendError(f"cannot read {ifname}: {e.strerror}") from None
        if link is None:
            raise BackendError(f"interface {ifname} does not exist")
        try:
            if changes.mtu is not None:
                rtnl.set_link(nl, link.index, mtu=changes.mtu)
            for cidr in sorted(changes.remove):
                rtnl.delete_address(nl, link.index, cidr)
            for cidr in sorted(changes.add):
                rtnl.add_address(nl, link.index, cidr)
            if changes.up:
                rtnl.set_link(nl, link.index, up=True)
        except OSError as e:
            raise BackendError(f"cannot configure {ifname}: {e.strerror}") from None


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
