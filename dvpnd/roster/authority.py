"""Who may say who is a member: the verifier interface, its first implementation (an Ed25519
authority key from `cryptography`, kept by the operator and never by the hub), and the
operator's side (the key and the roster it last signed).

The next implementation is admission by TDX attestation (a quote from Dstack's guest agent
binding a key to the app's compose hash): another Verifier, chosen by the proof's type."""

from __future__ import annotations

import base64
import binascii
import os
import stat
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from dvpnd.errors import DvpnError
from dvpnd.roster.model import (
    SIGNING_CONTEXT,
    Document,
    Member,
    Roster,
    RosterError,
    parse_payload,
    render_document,
    render_payload,
    split_document,
)
from dvpnd.util.fsutil import read_regular, write_atomic

KEY_FILE = "authority.key"
ROSTER_FILE = "roster.json"


class Verifier(Protocol):
    """Checks a document's proof; raises RosterError('signature') if it does not hold."""

    def verify(self, doc: Document, origin: str) -> None: ...


def decode_public(text: str) -> Ed25519PublicKey:
    """An authority public key from its base64 form; ValueError if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    if len(raw) != 32:
        raise ValueError("is not an Ed25519 public key (32 bytes of base64)")
    return Ed25519PublicKey.from_public_bytes(raw)


def encode_public(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


@dataclass(frozen=True)
class Ed25519Verifier:
    public_key: str

    def verify(self, doc: Document, origin: str) -> None:
        sig_text = doc.proof.get("signature")
        if doc.proof.get("type") != "ed25519" or not isinstance(sig_text, str):
            raise RosterError("signature", f"{origin}: the proof is not an Ed25519 signature")
        try:
            sig = base64.b64decode(sig_text, validate=True)
            decode_public(self.public_key).verify(sig, SIGNING_CONTEXT + doc.payload)
        except (binascii.Error, ValueError, InvalidSignature):
            raise RosterError("signature", f"{origin}: the signature does not verify against the "
                                           f"authority key {self.public_key}") from None


def verify_document(data: bytes, verifier: Verifier, origin: str) -> tuple[Roster, bytes]:
    """The roster in a document and its payload, if the proof holds; nothing in the payload is
    looked at before that."""
    doc = split_document(data, origin)
    verifier.verify(doc, origin)
    return parse_payload(doc.payload, origin), doc.payload


# --- the operator's side --------------------------------------------------------------------

@dataclass
class Authority:
    """The operator's authority directory: the private key (0600) and the roster it last signed."""

    dir: Path

    @property
    def key_file(self) -> Path:
        return self.dir / KEY_FILE

    @property
    def roster_file(self) -> Path:
        return self.dir / ROSTER_FILE

    def init(self) -> str:
        """Make the key (never replacing one); return its public half."""
        if self.key_file.exists():
            raise DvpnError(f"{self.key_file}: an authority key exists already; a new one would "
                            "orphan every spoke (rotating it is a runbook: see the README)")
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        write_atomic(self.key_file, base64.b64encode(raw) + b"\n", mode=0o600)
        return encode_public(key.public_key())

    def _private(self) -> Ed25519PrivateKey:
        path = self.key_file

        def mine(st: os.stat_result) -> None:
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or st.st_uid != os.geteuid():
                raise DvpnError(f"{path}: must be yours and mode 0600 (whoever reads it admits "
                                "machines to the overlay)")

        text = read_regular(path, limit=4096, check=mine)
        if text is None:
            raise DvpnError(f"{path}: no authority key here; run 'dvpnctl authority init'")
        try:
            raw = base64.b64decode(text.strip(), validate=True)
            return Ed25519PrivateKey.from_private_bytes(raw)
        except (binascii.Error, ValueError):
            raise DvpnError(f"{path}: not an authority key (32 bytes of base64)") from None

    def public(self) -> str:
        return encode_public(self._private().public_key())

    def sign(self, roster: Roster) -> bytes:
        payload = render_payload(roster)
        sig = self._private().sign(SIGNING_CONTEXT + payload)
        return render_document(payload, {"type": "ed25519", "signature": base64.b64encode(sig).decode()})

    def current(self) -> Roster | None:
        """The roster this authority signed last (checked against its own key), or None."""
        text = read_regular(self.roster_file, limit=4 << 20)
        if text is None:
            return None
        roster, _ = verify_document(text.encode(), Ed25519Verifier(self.public()), str(self.roster_file))
        return roster

    def publish(self, roster: Roster) -> bytes:
        """Sign `roster` and keep it as the current one; return the document."""
        doc = self.sign(roster)
        write_atomic(self.roster_file, doc, mode=0o644)
        return doc

    def amend(self, members: tuple[Member, ...], valid: int, network: IPv4Network | None = None,
              now: int | None = None) -> Roster:
        """The next roster: these members, the next serial, issued now, valid for `valid` seconds;
        checked as every node will check it (RosterError), then signed and kept as the current one.
        `network` is needed only for the first roster."""
        old = self.current()
        now = int(time.time()) if now is None else now
        net = old.network if old is not None else network
        if net is None:
            raise DvpnError(f"{self.roster_file}: no roster yet, and no network given for the first one")
        new = Roster(network=net, serial=(old.serial + 1) if old else 1, issued=now, expires=now + valid,
                     members=members)
        parse_payload(render_payload(new), "the new roster")
        self.publish(new)
        return new
