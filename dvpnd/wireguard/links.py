"""Links by name (pyroute2): which kind an interface is, and removing one."""

from __future__ import annotations

from dvpnd.errors import BackendError


def link_kind(ifname: str) -> str | None:
    """'wireguard' for a kernel device, 'tun' for wireguard-go, None if absent."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=ifname)
        if not links:
            return None
        msg = ipr.get_links(links[0])[0]
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
