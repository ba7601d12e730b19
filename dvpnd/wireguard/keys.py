"""WireGuard keys: Curve25519 key pairs, their base64 form, and the node's key file.

The private key is created on the node that uses it and never leaves it: no log line,
status answer or error message carries it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import stat
from pathlib import Path

from dvpnd.errors import DvpnError
from dvpnd.util.fsutil import write_atomic

KEY_LEN = 32
_P = 2**255 - 19
_A24 = 121665


class KeyFileError(DvpnError):
    """The key file cannot be used (unsafe permissions, unreadable, malformed)."""


def _x25519(scalar: bytes, u_coord: bytes) -> bytes:
    """X25519 scalar multiplication (RFC 7748, section 5), constant structure ladder."""
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    n = int.from_bytes(k, "little")
    x1 = int.from_bytes(u_coord, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in reversed(range(255)):
        bit = (n >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def generate_private_key() -> bytes:
    """A fresh, clamped Curve25519 private key from the OS's random source."""
    k = bytearray(os.urandom(KEY_LEN))
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return bytes(k)


@functools.lru_cache(maxsize=8)
def public_key(private: bytes) -> bytes:
    """The public key of a private key (what `wg pubkey` prints, as raw bytes)."""
    return _x25519(private, (9).to_bytes(32, "little"))


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def decode_key(text: str) -> bytes:
    """Decode a base64 WireGuard key; raise ValueError with a reason if it is not one."""
    text = text.strip()
    if len(text) != 44 or not text.endswith("="):
        raise ValueError("is not a WireGuard key (44 characters of base64 ending in '=')")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    if len(raw) != KEY_LEN:
        raise ValueError("does not decode to 32 bytes")
    return raw


def load_or_create_private_key(path: Path) -> tuple[bytes, bool]:
    """Read the node's private key, creating it (0600; a missing directory 0700) if missing.

    Returns (key, created). Refuses a key file that group or others can read or that another
    user owns, and refuses to make a new identity where a key rotation was interrupted.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        left = [p.name for p in (path.with_name(path.name + ".next"), path.with_name(path.name + ".old"))
                if p.exists()]
        if left:
            raise KeyFileError(
                f"{path}: missing, but {' and '.join(left)} exist beside it: a key rotation was "
                f"interrupted, and a new key would be a new identity. To finish it: "
                f"mv {path}.next {path}; to go back: mv {path}.old {path}") from None
        # A directory that exists keeps its mode (it may be shared, 1777); a new one is ours.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = generate_private_key()
        write_atomic(path, (encode_key(key) + "\n").encode(), mode=0o600)
        return key, True
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read the private key: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: private key is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}'"
        )
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{path}: owned by uid {st.st_uid}, not {os.geteuid()}: whoever owns it can "
                           f"change this node's identity; run 'chown {os.geteuid()}: {path}'")
    try:
        text = path.read_text(encoding="ascii")
        return decode_key(text), False
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: cannot read the private key: {e}") from None
    except ValueError as e:
        # The reason never quotes the file's content.
        raise KeyFileError(f"{path}: the private key file {e}") from None


def replace_private_key(path: Path, key: bytes) -> None:
    """Write a new private key atomically over the old one."""
    write_atomic(path, (encode_key(key) + "\n").encode(), mode=0o600)
