"""Generic netlink: a family's id by name, and its messages' 4-byte header."""

from __future__ import annotations

import struct

from dvpnd.netlink import codec
from dvpnd.netlink.sock import NETLINK_GENERIC, Netlink

GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 0x10, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
GENL_HDR = struct.Struct("=BBH")  # cmd, version, reserved


def header(cmd: int, version: int) -> bytes:
    return GENL_HDR.pack(cmd, version, 0)


def family_id(nl: Netlink, name: str) -> int:
    """The id the kernel gave the family `name` (ENOENT if it has no such family)."""
    (reply,) = nl.request(GENL_ID_CTRL, header(CTRL_CMD_GETFAMILY, 1) + codec.string(CTRL_ATTR_FAMILY_NAME, name),
                          what=f"no generic netlink family {name}")
    return codec.get_u16(codec.attr_map(reply, GENL_HDR.size)[CTRL_ATTR_FAMILY_ID])


def generic() -> Netlink:
    return Netlink(NETLINK_GENERIC)
