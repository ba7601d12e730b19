"""The seed's runbooks (add, remove, rotate a spoke) as pure functions; dvpnctl does the I/O."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from dvpnd.config.model import Config, PeerSpec
from dvpnd.errors import DvpnError
from dvpnd.wireguard.keytext import decode_key


class RunbookInputError(DvpnError):
    """The request contradicts the configuration (exit 2)."""


FIRST_SPOKE_HOST = 11  # the seed numbers spokes .11, .12, .13 ...


def next_free_address(config: Config) -> IPv4Address:
    """The lowest overlay address from .11 on that neither the hub nor a spoke uses."""
    used = {config.hub_address, *(p.address for p in config.peers)}
    start = int(config.network.network_address) + FIRST_SPOKE_HOST
    for n in range(start, int(config.network.broadcast_address)):
        addr = IPv4Address(n)
        if addr not in used:
            return addr
    raise DvpnError(f"{config.path}: overlay {config.network} has no free address left")


def check_new_spoke(config: Config, name: str, pubkey: str, address: IPv4Address | None) -> IPv4Address:
    """Validate a spoke about to be added to the hub; return its address."""
    if not config.is_hub:
        raise RunbookInputError(f"{config.path}: 'spoke add' runs on the hub (this node has role: {config.role})")
    try:
        decode_key(pubkey)
    except ValueError as e:
        raise RunbookInputError(f"--pubkey {e}") from None
    for p in config.peers:
        if p.name == name:
            raise RunbookInputError(f"a spoke named {name!r} exists already ({p.origin})")
        if p.public_key == pubkey:
            raise RunbookInputError(f"that public key belongs to spoke {p.name!r} ({p.origin})")
        if address is not None and p.address == address:
            raise RunbookInputError(f"{address} is used by spoke {p.name!r} ({p.origin})")
    if address is None:
        return next_free_address(config)
    if address not in config.network or address in (config.network.network_address,
                                                      config.network.broadcast_address):
        raise RunbookInputError(f"--address {address} is not a host address of the overlay {config.network}")
    if address == config.hub_address:
        raise RunbookInputError(f"--address {address} is the hub's address")
    return address


def render_peer_file(name: str, pubkey: str, address: IPv4Address, next_key: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "public_key": pubkey, "address": str(address)}
    if next_key:
        doc["next_public_key"] = next_key
    return doc


def render_spoke_config(config: Config, hub_pubkey: str, name: str, address: IPv4Address) -> dict[str, Any]:
    """The YAML a new spoke needs (its own key it makes itself)."""
    port = config.wireguard.listen_port
    endpoint = str(config.public_endpoint) if config.public_endpoint else f"<hub-public-address>:{port}"
    return {
        "role": "spoke",
        "name": name,
        "overlay": {"network": str(config.network), "address": str(address)},
        "hub": {"public_key": hub_pubkey, "endpoint": endpoint},
    }


def peer_file_of(config: Config, name: str) -> Path:
    """The peers.d file that defines spoke `name`; inline spokes are edited by hand."""
    for p in config.peers:
        if p.name == name:
            path = config.peers_dir / f"{name}.yaml"
            if not p.origin.startswith(str(config.peers_dir)):
                raise DvpnError(f"spoke {name!r} is defined inline at {p.origin}; edit that file instead")
            if not path.exists():
                raise DvpnError(f"spoke {name!r} is defined in {p.origin.split(':')[0]}, not {path}")
            return path
    raise RunbookInputError(f"no spoke named {name!r} in {config.path} or {config.peers_dir}")


def find_spoke(config: Config, name: str) -> PeerSpec:
    for p in config.peers:
        if p.name == name:
            return p
    raise RunbookInputError(f"no spoke named {name!r}")
