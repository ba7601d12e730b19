"""WireGuard keys: Curve25519 key pairs, their base64 form, and the node's key file.

The private key is created on the node that uses it and never leaves it: no log line,
status answer or error message carries it.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from dvpnd.errors import DvpnError
from dvpnd.wireguard.keytext import KEY_LEN, decode_key, encode_key

__all__ = ["KEY_LEN", "KeyFileError", "decode_key", "encode_key", "generate_private_key",
           "load_or_create_private_key", "public_key", "replace_private_key"]
from dvpnd.util.fsutil import write_atomic


class KeyFileError(DvpnError):
    """The key file cannot be used (unsafe permissions, unreadable, malformed)."""


def generate_private_key() -> bytes:
    """A fresh Curve25519 private key (the library's, from the OS's random source), clamped
    as `wg genkey` prints it."""
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    k = bytearray(raw)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return bytes(k)


@functools.lru_cache(maxsize=8)
def public_key(private: bytes) -> bytes:
    """The public key of a private key (what `wg pubkey` prints, as raw bytes): X25519 from
    `cryptography` (OpenSSL's constant-time implementation)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


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
