"""wireguard-go's UAPI: the cross-platform text protocol on /var/run/wireguard/<if>.sock.

`encode_set` and `parse_get` are pure; `uapi_request` is the only I/O.
Keys travel as hex on this protocol and as base64 everywhere else in dvpnd.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from dvpnd.errors import BackendError
from dvpnd.util.unixsock import unix_request
from dvpnd.wireguard.device import DeviceChanges, DeviceState, PeerState, normalize_cidr

SOCKET_DIR = Path("/var/run/wireguard")


class UapiTimeout(BackendError):
    """The socket accepted the request but no answer came in time."""


def b64_to_hex(key: str) -> str:
    return base64.b64decode(key).hex()


def hex_to_b64(key: str) -> str:
    return binascii.b2a_base64(bytes.fromhex(key), newline=False).decode("ascii")


def encode_set(changes: DeviceChanges) -> str:
    """The `set=1` request for these changes (ending with the blank line)."""
    lines = ["set=1"]
    if changes.private_key is not None:
        lines.append(f"private_key={b64_to_hex(changes.private_key)}")
    if changes.listen_port is not None:
        lines.append(f"listen_port={changes.listen_port}")
    for p in changes.peers:
        lines.append(f"public_key={b64_to_hex(p.public_key)}")
        if p.remove:
            lines.append("remove=true")
            continue
        if not p.create:
            # Never create a peer by accident when updating one that vanished meanwhile.
            lines.append("update_only=true")
        if p.endpoint is not None:
            lines.append(f"endpoint={p.endpoint}")
        if p.persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        if p.allowed_ips is not None:
            lines.append("replace_allowed_ips=true")
            lines.extend(f"allowed_ip={cidr}" for cidr in sorted(p.allowed_ips))
    return "\n".join(lines) + "\n\n"


@dataclass
class _Peer:
    """A peer being read from a `get` reply."""

    public_key: str
    allowed_ips: set[str] = field(default_factory=set)
    endpoint: str | None = None
    keepalive: int = 0
    hs_sec: int = 0
    hs_nsec: int = 0
    rx: int = 0
    tx: int = 0

    def state(self) -> PeerState:
        handshake = (self.hs_sec + self.hs_nsec / 1e9) if self.hs_sec or self.hs_nsec else None
        return PeerState(public_key=self.public_key, allowed_ips=frozenset(self.allowed_ips),
                         endpoint=self.endpoint, persistent_keepalive=self.keepalive,
                         last_handshake=handshake, rx_bytes=self.rx, tx_bytes=self.tx)


_INT_FIELDS = {"persistent_keepalive_interval": "keepalive", "last_handshake_time_sec": "hs_sec",
               "last_handshake_time_nsec": "hs_nsec", "rx_bytes": "rx", "tx_bytes": "tx"}


def only_peers(text: str, keys: frozenset[str]) -> str:
    """A `get` reply with only the peers whose (base64) keys are in `keys`, cut out with a few
    C-level passes (the read-back of one peer written among thousands)."""
    hexkeys = {b64_to_hex(k) for k in keys}
    end = text.rfind("\nerrno=")
    body, tail = (text[:end], text[end:]) if end >= 0 else (text, "")
    head, *peers = body.split("\npublic_key=")
    return "\npublic_key=".join([head, *(p for p in peers if p[:64] in hexkeys)]) + tail


# One peer as wireguard-go writes it (device/uapi.go, IpcGetOperation: these lines in this order),
# less the leading "public_key=": the parse's fast path. A peer written any other way (another
# implementation, a field added) takes the line-by-line path, with the same result.
_PEER = re.compile(
    r"([0-9a-f]{64})\n(?:preshared_key=[0-9a-f]{64}\n)?(?:protocol_version=1\n)?(?:endpoint=([^\n]+)\n)?"
    r"last_handshake_time_sec=(\d+)\nlast_handshake_time_nsec=(\d+)\ntx_bytes=(\d+)\nrx_bytes=(\d+)\n"
    r"persistent_keepalive_interval=(\d+)((?:\nallowed_ip=[^\n]+)*)\n?")


def _cidr(value: str) -> str:
    # wireguard-go prints masked prefixes; a host route needs no re-parsing (the hot path).
    return value if value.endswith("/32") and "." in value else normalize_cidr(value)


def _line(line: str) -> tuple[str, str]:
    key, sep, value = line.partition("=")
    if not sep:
        raise BackendError(f"UAPI: malformed line {line[:40]!r}")
    return key, value


def _peer_by_lines(chunk: str) -> PeerState:
    """One peer's lines (the first, its key's hex, without "public_key="), one by one."""
    first, *lines = chunk.split("\n")
    cur = _Peer(hex_to_b64(first))
    for line in lines:
        if not line:
            continue
        key, value = _line(line)
        if key == "allowed_ip":
            cur.allowed_ips.add(_cidr(value))
        elif key == "endpoint":
            cur.endpoint = value
        elif key in _INT_FIELDS:
            setattr(cur, _INT_FIELDS[key], int(value))
    return cur.state()


def _peer(chunk: str) -> PeerState:
    m = _PEER.fullmatch(chunk)
    if m is None:
        return _peer_by_lines(chunk)
    hexkey, endpoint, sec, nsec, tx, rx, keepalive, ips = m.groups()
    allowed = frozenset(map(_cidr, ips.split("\nallowed_ip=")[1:]))
    hs = int(sec) + int(nsec) / 1e9
    return PeerState(hex_to_b64(hexkey), allowed, endpoint, int(keepalive), hs or None, int(rx), int(tx))


def parse_get(text: str, only: frozenset[str] | None = None) -> DeviceState:
    """Parse the reply to `get=1` into a DeviceState (with `only`: only those peers); raise
    BackendError on errno != 0. The reply is cut into peers with one C-level split; each peer is
    read with one regular expression (the order wireguard-go writes), or line by line."""
    if only is not None:
        text = only_peers(text, only)
    head, *chunks = ("\n" + text).split("\npublic_key=")
    if chunks:  # the lines after the last peer (errno) are the device's, as those before the first
        last, nl, tail = chunks[-1].partition("\nerrno=")
        chunks[-1] = last
        head += nl + tail
    private_key = None
    listen_port = fwmark = 0
    errno = None
    for line in head.split("\n"):
        if not line:
            continue
        key, value = _line(line)
        if key == "errno":
            errno = int(value)
        elif key == "private_key":
            private_key = hex_to_b64(value)
        elif key == "listen_port":
            listen_port = int(value)
        elif key == "fwmark":
            fwmark = int(value)
    if errno not in (None, 0):
        raise BackendError(f"UAPI get failed: errno={errno}")
    peers: dict[str, PeerState] = {}
    for chunk in chunks:
        try:
            peer = _peer(chunk)
        except ValueError as e:  # a key that is not hex, a count that is not a number, a bad prefix
            raise BackendError(f"UAPI: malformed peer {chunk[:64]!r}: {e}") from None
        peers[peer.public_key] = peer
    from dvpnd.wireguard.keys import decode_key, encode_key, public_key

    pub = encode_key(public_key(decode_key(private_key))) if private_key else None
    return DeviceState(private_key=private_key, public_key=pub, listen_port=listen_port,
                       fwmark=fwmark, peers=peers)


# what a `get` reply says the device did, not what it was told: handshakes and byte counters
_COUNTERS = re.compile(r"\n(?:last_handshake_time_n?sec|[rt]x_bytes)=[^\n]*")
_OK_END = "\nerrno=0\n\n"


def config_digest(text: str) -> bytes | None:
    """A digest of what a `get` reply says of the device's configuration: two replies with the same
    digest describe the same device to a reconcile, whatever their handshakes and byte counters
    (None for a reply that reports an error). Peers are taken in key order: wireguard-go lists
    them in a Go map's order, which changes from one read to the next. A few C-level passes over
    the text, no object per peer: a fraction of parse_get's cost."""
    if not text.endswith(_OK_END):
        return None
    head, *peers = text[:-len(_OK_END)].split("\npublic_key=")
    peers.sort()
    canonical = _COUNTERS.sub("", "\npublic_key=".join([head, *peers]))
    return hashlib.blake2b(canonical.encode(), digest_size=32).digest()


def parse_errno(reply: str) -> int:
    for line in reply.split("\n"):
        if line.startswith("errno="):
            return int(line[6:])
    raise BackendError("UAPI: reply has no errno line")


def socket_path(ifname: str) -> Path:
    return SOCKET_DIR / f"{ifname}.sock"


def uapi_request(ifname: str, request: str, timeout: float = 5.0, path: Path | None = None) -> str:
    """Send one request and return the whole reply (up to and including errno=N); `path`, when
    the socket is not in SOCKET_DIR (another lab node's, read from outside it)."""
    path = path or socket_path(ifname)
    try:
        # The reply ends with "errno=N\n\n".
        reply = unix_request(path, request.encode("ascii"), lambda tail: b"errno=" in tail and tail.endswith(b"\n\n"),
                             timeout)
    except FileNotFoundError:
        raise BackendError(f"{path}: no such socket (is wireguard-go running for {ifname}?)") from None
    except TimeoutError:
        raise UapiTimeout(f"{path}: wireguard-go did not answer within {timeout:.0f}s") from None
    except OSError as e:
        raise BackendError(f"{path}: {e.strerror or e}") from None
    return reply.decode("ascii", errors="replace")


def socket_peer_pid(path: Path) -> int | None:
    """The PID of the process listening on a Unix socket (SO_PEERCRED), or None."""
    import struct

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(path))
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, _uid, _gid = struct.unpack("3i", creds)
            return int(pid)
    except OSError:
        return None


def uapi_peer_pid(ifname: str) -> int | None:
    """The PID of the wireguard-go process serving `ifname`."""
    return socket_peer_pid(socket_path(ifname))
