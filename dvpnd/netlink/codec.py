"""Netlink messages and attributes (pure): packing and splitting, no socket.

A message is a 16-byte header (length, type, flags, sequence, port id) and a payload; an
attribute is a 4-byte header (length, type) and its data, padded to 4 bytes. Nested attributes
are attributes whose data is more attributes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# <linux/netlink.h>
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_ROOT, NLM_F_MATCH, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x200, 0x400
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

_HDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_U16, _U32, _U64, _I32 = struct.Struct("=H"), struct.Struct("=I"), struct.Struct("=Q"), struct.Struct("=i")


class NetlinkFormatError(ValueError):
    """A message or attribute whose lengths do not add up."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def message(kind: int, flags: int, seq: int, payload: bytes) -> bytes:
    return _HDR.pack(_HDR.size + len(payload), kind, flags, seq, 0) + payload


def split_messages(buf: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each message in one datagram from the kernel."""
    at = 0
    while at + _HDR.size <= len(buf):
        length, kind, flags, seq, _pid = _HDR.unpack_from(buf, at)
        if length < _HDR.size or at + length > len(buf):
            raise NetlinkFormatError(f"netlink message of length {length} at offset {at} of {len(buf)}")
        yield kind, flags, seq, buf[at + _HDR.size:at + length]
        at += _align(length)


_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return _ATTR.pack(length, kind) + data + _PAD[length & 3]


def nested(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def u8(kind: int, v: int) -> bytes:
    return attr(kind, bytes((v,)))


def u16(kind: int, v: int) -> bytes:
    return attr(kind, _U16.pack(v))


def u32(kind: int, v: int) -> bytes:
    return attr(kind, _U32.pack(v))


def string(kind: int, v: str) -> bytes:
    return attr(kind, v.encode() + b"\0")


def attrs(data: bytes, at: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type, data) of each attribute in `data` from offset `at`, the flag bits masked off."""
    end = len(data)
    while at + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, at)
        if length < _ATTR.size or at + length > end:
            raise NetlinkFormatError(f"netlink attribute of length {length} at offset {at} of {end}")
        yield kind & NLA_TYPE_MASK, data[at + _ATTR.size:at + length]
        at += _align(length)


def attr_map(data: bytes, at: int = 0) -> dict[int, bytes]:
    """The attributes as a map by type (the last one wins, as the kernel's parser does).
    (attrs() unrolled: a 1,000-peer device is 13,000 attributes, parsed on every read.)"""
    out: dict[int, bytes] = {}
    end = len(data)
    unpack = _ATTR.unpack_from
    while at + 4 <= end:
        length, kind = unpack(data, at)
        if length < 4 or at + length > end:
            raise NetlinkFormatError(f"netlink attribute of length {length} at offset {at} of {end}")
        out[kind & NLA_TYPE_MASK] = data[at + 4:at + length]
        at += (length + 3) & ~3
    return out


def attr_list(data: bytes) -> list[bytes]:
    """The data of each attribute in a nested array (WireGuard's peers, a peer's allowed IPs),
    whose types are indexes."""
    out: list[bytes] = []
    at, end = 0, len(data)
    unpack = _ATTR.unpack_from
    while at + 4 <= end:
        length, _kind = unpack(data, at)
        if length < 4 or at + length > end:
            raise NetlinkFormatError(f"netlink attribute of length {length} at offset {at} of {end}")
        out.append(data[at + 4:at + length])
        at += (length + 3) & ~3
    return out


def get_u16(data: bytes) -> int:
    return int(_U16.unpack_from(data)[0])


def get_u32(data: bytes) -> int:
    return int(_U32.unpack_from(data)[0])


def get_u64(data: bytes) -> int:
    return int(_U64.unpack_from(data)[0])


def get_str(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode(errors="replace")


def error_code(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR (0: an acknowledgement) or of an NLMSG_DONE's payload."""
    return -int(_I32.unpack_from(payload)[0]) if len(payload) >= 4 else 0
