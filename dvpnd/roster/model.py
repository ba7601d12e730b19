"""The roster as data: parsing and checking a signed document, rendering one, and the policy
that decides whether a verified roster replaces the one in force. All pure.

A roster document is one JSON object:

    {"format": "dvpn-roster/1",
     "payload": "<JSON text: network, serial, issued, expires, members>",
     "proof": {"type": "ed25519", "signature": "<base64>"}}

The proof covers the payload's exact bytes (no canonical JSON to get wrong), prefixed with
SIGNING_CONTEXT so that a signature over a roster can never be mistaken for one over anything
else. One signature covers the whole set: a hub cannot drop one revocation or keep serving a
record that has since changed hands; all it can do is serve an older document, which the
serial refuses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from dvpnd.errors import DvpnError
from dvpnd.wireguard.keytext import decode_key

FORMAT = "dvpn-roster/1"
SIGNING_CONTEXT = b"dvpn roster v1\n"
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024  # a 4,096-member roster is about 1 MiB
MAX_MEMBERS = 4096
MAX_INT = 2**53  # exact in every JSON implementation
LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
MEMBER_KEYS = {"name", "address", "transit_key", "overlay_key"}
OPTIONAL_MEMBER_KEYS = {"aliases"}  # (written only when not empty: rosters without them are unchanged)
MAX_ALIASES = 8
PAYLOAD_KEYS = {"network", "serial", "issued", "expires", "members"}
# Why a roster was refused: the label of dvpn_roster_refused_total{reason}.
REASONS = ("signature", "expired", "older", "malformed", "network")


class RosterError(DvpnError):
    def __init__(self, reason: str, message: str):
        assert reason in REASONS
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Member:
    name: str
    address: IPv4Address
    transit_key: str
    overlay_key: str
    aliases: tuple[str, ...] = ()  # more names for its address (the overlay's DNS), e.g. "pg-a"


@dataclass(frozen=True)
class Roster:
    network: IPv4Network
    serial: int
    issued: int
    expires: int
    members: tuple[Member, ...]

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)


@dataclass(frozen=True)
class Document:
    """A roster document split into what was signed and its proof (not yet verified)."""

    payload: bytes
    proof: dict[str, Any]


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < MAX_INT


def split_document(data: bytes, origin: str) -> Document:
    """The envelope, checked for shape and size; the payload is not trusted yet."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise RosterError("malformed", f"{origin}: {len(data)} bytes, more than a roster may be "
                                       f"({MAX_DOCUMENT_BYTES})")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise RosterError("malformed", f"{origin}: not a roster document (JSON: {str(e)[:80]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RosterError("malformed", f"{origin}: not a roster document (format must be {FORMAT!r})")
    if set(doc) != {"format", "payload", "proof"}:
        raise RosterError("malformed", f"{origin}: a roster document has exactly format, payload and proof")
    payload, proof = doc["payload"], doc["proof"]
    if not isinstance(payload, str) or not isinstance(proof, dict):
        raise RosterError("malformed", f"{origin}: payload must be a string and proof an object")
    return Document(payload=payload.encode("utf-8"), proof=proof)


def _member(m: Any, where: str, network: IPv4Network, reserved: set[IPv4Address]) -> Member:
    if not isinstance(m, dict) or not MEMBER_KEYS <= set(m) <= MEMBER_KEYS | OPTIONAL_MEMBER_KEYS:
        raise RosterError("malformed", f"{where}: a member has exactly {', '.join(sorted(MEMBER_KEYS))}"
                                       f" (and optionally {', '.join(sorted(OPTIONAL_MEMBER_KEYS))})")
    name = m["name"]
    if not isinstance(name, str) or not LABEL_RE.match(name):
        raise RosterError("malformed", f"{where}: name {str(name)[:70]!r} is not a DNS label "
                                       "(a-z, 0-9 and '-', at most 63, no '-' at either end)")
    where = f"{where} ({name})"
    try:
        addr = IPv4Address(m["address"])
    except (TypeError, ValueError):
        raise RosterError("malformed", f"{where}: address {str(m['address'])[:40]!r} is not an IPv4 address") \
            from None
    if addr not in network or addr in reserved:
        raise RosterError("malformed", f"{where}: address {addr} is not a member address in {network}")
    for k in ("transit_key", "overlay_key"):
        v = m[k]
        try:
            if not isinstance(v, str):
                raise ValueError("must be a string")
            if decode_key(v) == bytes(32):
                raise ValueError("is the all-zero key")
        except ValueError as e:
            raise RosterError("malformed", f"{where}: {k} {e}") from None
    aliases = m.get("aliases", [])
    if "aliases" in m and (not isinstance(aliases, list) or not 0 < len(aliases) <= MAX_ALIASES):
        raise RosterError("malformed", f"{where}: aliases must be a list of 1 to {MAX_ALIASES} DNS labels")
    for a in aliases:
        if not isinstance(a, str) or not LABEL_RE.match(a):
            raise RosterError("malformed", f"{where}: alias {str(a)[:70]!r} is not a DNS label")
    return Member(name=name, address=addr, transit_key=m["transit_key"], overlay_key=m["overlay_key"],
                  aliases=tuple(aliases))


def parse_payload(payload: bytes, origin: str) -> Roster:
    """The roster a verified payload describes; every member checked, the first problem named."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise RosterError("malformed", f"{origin}: payload is not JSON ({str(e)[:80]})") from None
    if not isinstance(data, dict) or set(data) != PAYLOAD_KEYS:
        raise RosterError("malformed", f"{origin}: payload must have exactly {', '.join(sorted(PAYLOAD_KEYS))}")
    try:
        network = IPv4Network(data["network"], strict=True)
    except (TypeError, ValueError):
        raise RosterError("malformed", f"{origin}: network {str(data['network'])[:40]!r} is not an IPv4 network") \
            from None
    for k in ("serial", "issued", "expires"):
        if not _positive_int(data[k]):
            raise RosterError("malformed", f"{origin}: {k} must be a positive integer")
    if data["expires"] <= data["issued"]:
        raise RosterError("malformed", f"{origin}: expires is not after issued")
    raw = data["members"]
    if not isinstance(raw, list):
        raise RosterError("malformed", f"{origin}: members must be a list")
    if len(raw) > MAX_MEMBERS:
        raise RosterError("malformed", f"{origin}: {len(raw)} members, more than {MAX_MEMBERS}")
    reserved = {network.network_address, network.broadcast_address, next(network.hosts())}
    members: list[Member] = []
    seen: dict[Any, str] = {}  # name, address and every key -> whose
    for i, item in enumerate(raw):
        where = f"{origin}: members[{i}]"
        m = _member(item, where, network, reserved)
        for what, value in (("name", m.name), ("address", m.address), ("transit_key", m.transit_key),
                            ("overlay_key", m.overlay_key), *(("name", a) for a in m.aliases)):
            if value in seen:
                raise RosterError("malformed", f"{where} ({m.name}): {what} {value} is also {seen[value]}'s")
            seen[value] = m.name
        members.append(m)
    return Roster(network=network, serial=data["serial"], issued=data["issued"], expires=data["expires"],
                  members=tuple(sorted(members, key=lambda mm: mm.address)))


def render_payload(roster: Roster) -> bytes:
    """The payload to sign: compact JSON, members by address."""
    return json.dumps({
        "network": str(roster.network), "serial": roster.serial, "issued": roster.issued,
        "expires": roster.expires,
        "members": [{"name": m.name, "address": str(m.address), "transit_key": m.transit_key,
                     "overlay_key": m.overlay_key, **({"aliases": list(m.aliases)} if m.aliases else {})}
                    for m in sorted(roster.members, key=lambda mm: mm.address)],
    }, separators=(",", ":")).encode()


def render_document(payload: bytes, proof: dict[str, Any]) -> bytes:
    return (json.dumps({"format": FORMAT, "payload": payload.decode("utf-8"), "proof": proof}, indent=1)
            + "\n").encode()


# --- the policy ------------------------------------------------------------------------------

def judge(new: Roster, payload: bytes, *, network: IPv4Network, highest_serial: int,
          current_payload: bytes | None, now: float, origin: str) -> bool:
    """Whether a verified roster replaces the one in force: True to adopt it, False if it is the
    one in force already; RosterError (older, expired, network) to refuse it.

    Expiry: a roster that has already expired when it arrives is refused (a hub replaying an
    old one); the roster in force is never dropped because it expired (a host controls a CVM's
    clock, and a database must not go dark because the operator was away): it stays in force
    and the node reports it expired. Revocation is by serial, which no clock can undo.
    """
    if new.network != network:
        raise RosterError("network", f"{origin}: a roster for {new.network}; this node's overlay is {network}")
    if new.serial < highest_serial:
        raise RosterError("older", f"{origin}: serial {new.serial} is older than {highest_serial}, "
                                   "the highest this node has seen (a replay?)")
    if new.serial == highest_serial and current_payload is not None:
        if payload == current_payload:
            return False
        raise RosterError("older", f"{origin}: serial {new.serial} is the one in force, with other "
                                   "content: a new roster needs a new serial")
    if now >= new.expires:
        raise RosterError("expired", f"{origin}: expired at {new.expires} (now {int(now)}); the operator "
                                     "renews it with 'dvpnctl roster renew'")
    return True


def expired(roster: Roster, now: float) -> bool:
    return now >= roster.expires


async def read_capped(stream: Any, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """A whole body from an aiohttp stream however it arrives, never more than one byte past
    `limit` (what is over the limit is then refused as too large, without reading on)."""
    body = bytearray()
    async for chunk in stream.iter_any():
        body += chunk[: limit + 1 - len(body)]
        if len(body) > limit:
            break
    return bytes(body)
