"""Links by name (rtnetlink): which kind an interface is, and removing one."""

from __future__ import annotations

from dvpnd.errors import BackendError
from dvpnd.netlink import rtnl
from dvpnd.netlink.sock import is_missing


def link_kind(ifname: str) -> str | None:
    """'wireguard' for a kernel device, 'tun' for wireguard-go, None if absent."""
    try:
        with rtnl.route() as nl:
            link = rtnl.get_link(nl, ifname)
    except OSError as e:
        raise BackendError(f"cannot read link {ifname}: {e.strerror}") from None
    if link is None:
        return None
    return link.kind or "unknown"


def delete_link(ifname: str) -> bool:
    with rtnl.route() as nl:
        link = rtnl.get_link(nl, ifname)
        if link is None:
            return False
        try:
            rtnl.delete_link(nl, link.index)
        except OSError as e:
            if not is_missing(e):  # gone meanwhile
                raise BackendError(f"cannot delete {ifname}: {e.strerror}") from None
        return True
