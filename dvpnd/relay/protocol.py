"""The TCP fallback's wire rules (pure): what a WebSocket message may be, and how a spoke proves
that it holds its WireGuard key before the hub's relay carries anything for it.

A message is exactly one WireGuard datagram, as it would have crossed UDP: no framing of our own
(DERP and NetBird relay the same way). The relay checks its shape before it reaches WireGuard:
- type 1 (handshake initiation) 148 bytes, type 2 (response) 92, type 3 (cookie reply) 64, the
  three reserved bytes zero;
- type 4 (transport data): a 16-byte header, the ciphertext (padded to 16 bytes, or to the
  sender's MTU, so any length) and a 16-byte tag, no larger than the largest datagram the
  transit's MTU allows.

The proof: the hub's relay sends a fresh 32-byte nonce; the spoke answers with its public key and
HMAC-SHA256(K, context ‖ nonce ‖ spoke key ‖ hub key), where K is derived (HKDF-SHA256) from the
static X25519 shared secret of the spoke's and the hub's WireGuard keys. Only the two key holders
can compute it; everything in the roster or the hub's peer list is public and does not help. dvpnd
derives K and hands the relay K alone, never a WireGuard private key. It works in routed mode (the
spoke's wg0 key) and in the confidential overlay (its transit key) alike.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PATH = "/dvpn/relay/v1"
CONTEXT = b"dvpn relay v1"
NONCE_LEN = 32
FIXED_SIZES = {1: 148, 2: 92, 3: 64}
DATA_OVERHEAD = 32  # transport data: 16-byte header + 16-byte tag
AUTH_TIMEOUT = 5.0  # seconds the hub waits for the proof


def max_datagram(mtu: int) -> int:
    """The largest WireGuard datagram a tunnel with this MTU sends: its padded packet (WireGuard
    pads to 16 bytes, never beyond the MTU) plus header and tag."""
    return mtu + DATA_OVERHEAD


def datagram_problem(data: bytes, largest: int) -> str | None:
    """Why `data` is not a WireGuard datagram the relay may carry, or None."""
    if len(data) < 4:
        return f"{len(data)} bytes: shorter than any WireGuard message"
    kind = data[0]
    if data[1:4] != b"\0\0\0":
        return "reserved bytes not zero: not WireGuard"
    if kind in FIXED_SIZES:
        return None if len(data) == FIXED_SIZES[kind] else \
            f"type {kind} of {len(data)} bytes (WireGuard's is {FIXED_SIZES[kind]})"
    if kind != 4:
        return f"type {kind}: not a WireGuard message"
    if len(data) > largest:
        return f"{len(data)} bytes: larger than the transit's largest datagram ({largest})"
    if len(data) < DATA_OVERHEAD:
        return f"transport data of {len(data)} bytes: shorter than header and tag"
    return None


def auth_key(private: bytes, peer_public: bytes) -> bytes:
    """K for a spoke and a hub, from either side (X25519 is symmetric)."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=CONTEXT + b" auth").derive(shared)


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def proof(key: bytes, nonce: bytes, spoke_public: bytes, hub_public: bytes) -> bytes:
    return hmac.new(key, CONTEXT + nonce + spoke_public + hub_public, sha256).digest()


def render_challenge(nonce: bytes) -> str:
    return json.dumps({"v": 1, "nonce": base64.b64encode(nonce).decode()})


def render_answer(spoke_public: bytes, mac: bytes) -> str:
    return json.dumps({"key": base64.b64encode(spoke_public).decode(), "proof": base64.b64encode(mac).decode()})


@dataclass(frozen=True)
class Answer:
    spoke_public: bytes
    proof: bytes


def parse_challenge(text: str) -> bytes:
    try:
        msg = json.loads(text)
        nonce = base64.b64decode(msg["nonce"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ValueError("the relay's challenge is not {v, nonce}") from None
    if msg.get("v") != 1 or len(nonce) != NONCE_LEN:
        raise ValueError("the relay speaks another version")
    return nonce


def parse_answer(text: str) -> Answer:
    """The spoke's answer, or ValueError (anything else: no key of 32 bytes, no proof of 32)."""
    if len(text) > 256:
        raise ValueError("answer too long")
    try:
        msg = json.loads(text)
        key = base64.b64decode(msg["key"], validate=True)
        mac = base64.b64decode(msg["proof"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ValueError("not {key, proof} in base64") from None
    if len(key) != 32 or len(mac) != 32:
        raise ValueError("key or proof of the wrong length")
    return Answer(key, mac)


def verify(answer: Answer, nonce: bytes, hub_public: bytes, keys: dict[bytes, bytes]) -> bool:
    """Whether the answer proves possession of a spoke key this hub carries (`keys`: spoke public
    key -> K). Constant-time in the proof."""
    key = keys.get(answer.spoke_public)
    if key is None:
        return False
    return hmac.compare_digest(proof(key, nonce, answer.spoke_public, hub_public), answer.proof)


# --- UDP probes (transport: auto) ---------------------------------------------------------------
# A spoke on `auto` asks, every second, whether UDP reaches the hub's WireGuard port: a datagram
# to that very port whose first byte (0xff) is no WireGuard type. The hub's firewall redirects such
# datagrams to the relay, which answers those that carry a valid MAC of a spoke it carries, with a
# reply half their size: no reflection for anyone else, and no amplification.
PROBE, PROBE_REPLY = 0xFF, 0xFE
PROBE_LEN, PROBE_REPLY_LEN = 4 + 16 + 32 + 16, 4 + 16 + 16


def _mac16(key: bytes, what: bytes) -> bytes:
    return hmac.new(key, CONTEXT + what, sha256).digest()[:16]


def render_probe(key: bytes, spoke_public: bytes, nonce: bytes) -> bytes:
    return bytes([PROBE, 0, 0, 0]) + nonce + spoke_public + _mac16(key, b" probe" + nonce + spoke_public)


def parse_probe(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(nonce, spoke key, mac) of a probe, or None."""
    if len(data) != PROBE_LEN or data[:4] != bytes([PROBE, 0, 0, 0]):
        return None
    return data[4:20], data[20:52], data[52:68]


def probe_valid(key: bytes, nonce: bytes, spoke_public: bytes, mac: bytes) -> bool:
    return hmac.compare_digest(_mac16(key, b" probe" + nonce + spoke_public), mac)


def render_probe_reply(key: bytes, nonce: bytes) -> bytes:
    return bytes([PROBE_REPLY, 0, 0, 0]) + nonce + _mac16(key, b" probe reply" + nonce)


def probe_reply_valid(key: bytes, nonce: bytes, data: bytes) -> bool:
    return (len(data) == PROBE_REPLY_LEN and data[:4] == bytes([PROBE_REPLY, 0, 0, 0]) and data[4:20] == nonce
            and hmac.compare_digest(_mac16(key, b" probe reply" + nonce), data[20:]))


def fingerprint(der: bytes) -> str:
    """A certificate's pin, as spokes write it: sha256 of its DER, in hex."""
    return sha256(der).hexdigest()
