"""One netlink socket: a request, its replies, the kernel's errno raised as an OSError."""

from __future__ import annotations

import errno as errnos
import os
import socket

from dvpnd.netlink import codec

NETLINK_ROUTE, NETLINK_GENERIC = 0, 16
RCVBUF = 1 << 20
RECV_SIZE = 1 << 16  # the kernel fills at most 32 KiB per dump datagram


class NetlinkError(OSError):
    """The kernel refused a request; `errno` is its code."""

    def __init__(self, code: int, what: str):
        super().__init__(code, os.strerror(code))
        self.what = what

    def __str__(self) -> str:
        return f"{self.what}: {self.strerror}"


class Netlink:
    """A netlink socket of one protocol; a context manager that closes it."""

    def __init__(self, protocol: int):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self._sock.bind((0, 0))
        except OSError:
            self._sock.close()
            raise
        self._seq = 0

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def request(self, kind: int, payload: bytes, flags: int = 0, what: str = "netlink request") -> list[bytes]:
        """Send one request and return the payloads of its replies (a dump's, or none for an
        acknowledged change). NLM_F_DUMP requests end at NLMSG_DONE, others at the ack."""
        self._seq += 1
        seq = self._seq
        dump = flags & codec.NLM_F_DUMP == codec.NLM_F_DUMP
        flags |= codec.NLM_F_REQUEST | (0 if dump else codec.NLM_F_ACK)
        self._sock.send(codec.message(kind, flags, seq, payload))
        out: list[bytes] = []
        while True:
            buf = self._sock.recv(RECV_SIZE)
            for mkind, _mflags, mseq, body in codec.split_messages(buf):
                if mseq != seq:
                    continue  # (a late answer to an earlier request that was abandoned)
                if mkind == codec.NLMSG_ERROR:
                    code = codec.error_code(body)
                    if code:
                        raise NetlinkError(code, what)
                    return out
                if mkind == codec.NLMSG_DONE:
                    code = codec.error_code(body)
                    if code:
                        raise NetlinkError(code, what)
                    return out
                out.append(body)


def is_missing(e: OSError) -> bool:
    """The kernel's way of saying the object asked for does not exist."""
    return e.errno in (errnos.ENODEV, errnos.ENOENT)
