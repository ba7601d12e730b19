"""Links and IPv4 addresses over rtnetlink (man 7 rtnetlink): the few dvpnd needs."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from dvpnd.netlink import codec
from dvpnd.netlink.sock import NETLINK_ROUTE, Netlink

# <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 4, 18, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1
AF_UNSPEC, AF_INET = 0, 2

_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index


@dataclass(frozen=True)
class Link:
    index: int
    flags: int
    mtu: int
    kind: str | None  # IFLA_INFO_KIND: "wireguard", "tun", ...; None without link info

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(AF_UNSPEC, 0, index, flags, change)


def parse_link(payload: bytes) -> Link:
    _fam, _type, index, flags, _change = _IFINFO.unpack_from(payload)
    a = codec.attr_map(payload, _IFINFO.size)
    kind = None
    if IFLA_LINKINFO in a:
        info = codec.attr_map(a[IFLA_LINKINFO])
        kind = codec.get_str(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else None
    mtu = codec.get_u32(a[IFLA_MTU]) if IFLA_MTU in a else 0
    return Link(index=index, flags=flags, mtu=mtu, kind=kind)


def get_link(nl: Netlink, ifname: str) -> Link | None:
    """The link named `ifname`, or None if there is none."""
    try:
        (reply,) = nl.request(RTM_GETLINK, _ifinfo() + codec.string(IFLA_IFNAME, ifname),
                              what=f"cannot read link {ifname}")
    except OSError as e:
        if e.errno == 19:  # ENODEV
            return None
        raise
    return parse_link(reply)


def add_link(nl: Netlink, ifname: str, kind: str) -> None:
    info = codec.nested(IFLA_LINKINFO, codec.string(IFLA_INFO_KIND, kind))
    body = _ifinfo() + codec.string(IFLA_IFNAME, ifname) + info
    nl.request(RTM_NEWLINK, body, codec.NLM_F_CREATE | codec.NLM_F_EXCL, what=f"cannot create {kind} link {ifname}")


def delete_link(nl: Netlink, index: int) -> None:
    nl.request(RTM_DELLINK, _ifinfo(index), what=f"cannot delete link {index}")


def set_link(nl: Netlink, index: int, mtu: int | None = None, up: bool | None = None) -> None:
    flags = change = 0
    if up is not None:
        change, flags = IFF_UP, IFF_UP if up else 0
    body = _ifinfo(index, flags, change) + (codec.u32(IFLA_MTU, mtu) if mtu is not None else b"")
    nl.request(RTM_NEWLINK, body, what=f"cannot configure link {index}")


def parse_addr(payload: bytes) -> tuple[int, str] | None:
    """(link index, 'address/prefixlen') of an IPv4 RTM_NEWADDR, None for another family."""
    family, plen, _flags, _scope, index = _IFADDR.unpack_from(payload)
    if family != AF_INET:
        return None
    a = codec.attr_map(payload, _IFADDR.size)
    raw = a.get(IFA_ADDRESS) or a.get(IFA_LOCAL)
    if raw is None or len(raw) != 4:
        return None
    return index, f"{ipaddress.IPv4Address(raw)}/{plen}"


def get_addresses(nl: Netlink, index: int) -> frozenset[str]:
    """The IPv4 addresses (as 'address/prefixlen') on link `index`."""
    replies = nl.request(RTM_GETADDR, _IFADDR.pack(AF_INET, 0, 0, 0, 0), codec.NLM_F_DUMP,
                         what="cannot list addresses")
    return frozenset(a[1] for r in replies if (a := parse_addr(r)) is not None and a[0] == index)


def _addr_body(index: int, cidr: str) -> bytes:
    iface = ipaddress.IPv4Interface(cidr)
    raw = iface.ip.packed
    return (_IFADDR.pack(AF_INET, iface.network.prefixlen, 0, 0, index)
            + codec.attr(IFA_LOCAL, raw) + codec.attr(IFA_ADDRESS, raw))


def add_address(nl: Netlink, index: int, cidr: str) -> None:
    nl.request(RTM_NEWADDR, _addr_body(index, cidr), codec.NLM_F_CREATE | codec.NLM_F_EXCL,
               what=f"cannot add address {cidr}")


def delete_address(nl: Netlink, index: int, cidr: str) -> None:
    nl.request(RTM_DELADDR, _addr_body(index, cidr), what=f"cannot remove address {cidr}")


def route() -> Netlink:
    return Netlink(NETLINK_ROUTE)
