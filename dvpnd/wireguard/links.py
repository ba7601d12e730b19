"""Links by name (pyroute2): which kind an interface is, and removing one."""

from __future__ import annotations

from typing import Any

from dvpnd.errors import BackendError


def get_link(ipr: Any, ifname: str) -> Any | None:
    """The link's netlink message by name (pyroute2's IPRoute `ipr`), or None if absent."""
    idx = ipr.link_lookup(ifname=ifname)
    return ipr.get_links(idx[0])[0] if idx else None


def link_kind(ifname: str) -> str | None:
    """'wireguard' for a kernel device, 'tun' for wireguard-go, None if absent."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        msg = get_link(ipr, ifname)
        if msg is None:
            return None
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        return str(kind) if kind else "unknown"


def delete_link(ifname: str) -> bool:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return False
        try:
            ipr.link("del", index=idx[0])
        except NetlinkError as e:
            if e.code != 19:  # ENODEV: gone meanwhile
                raise BackendError(f"cannot delete {ifname}: {e}") from None
        return True
