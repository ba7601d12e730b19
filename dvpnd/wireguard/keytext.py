"""WireGuard keys as text: base64 of 32 bytes, as wg(8) prints them (pure)."""

from __future__ import annotations

import base64
import binascii

KEY_LEN = 32


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
