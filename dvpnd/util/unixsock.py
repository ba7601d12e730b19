"""One request over a Unix stream socket: connect, send, read until the reply is complete.
Used by dvpnctl towards dvpnd's control socket and by the userspace backend towards
wireguard-go's UAPI socket; OSError (FileNotFoundError, TimeoutError, ...) is the caller's to
word."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path


def unix_request(path: Path, request: bytes, done: Callable[[bytes], bool], timeout: float) -> bytes:
    """Send `request` and return what comes back until `done(reply so far)` or the peer closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(request)
        chunks: list[bytes] = []
        tail = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            tail = (tail + data)[-64:]  # `done` looks at the end only: cheap on big replies
            if done(tail):
                break
    return b"".join(chunks)
