"""A network interface's wanted and actual state (address, MTU, up) and the changes between them
(pure; netif.py reads and applies them)."""

from __future__ import annotations

from dataclasses import dataclass

from dvpnd.config.model import Config


@dataclass(frozen=True)
class LinkState:
    up: bool
    mtu: int
    addresses: frozenset[str]  # "10.88.0.11/24"


@dataclass(frozen=True)
class LinkChanges:
    up: bool = False
    mtu: int | None = None
    add: frozenset[str] = frozenset()
    remove: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return self.up or self.mtu is not None or bool(self.add) or bool(self.remove)


def render_link(config: Config) -> LinkState:
    return LinkState(up=True, mtu=config.wireguard.mtu,
                     addresses=frozenset({f"{config.address}/{config.network.prefixlen}"}))


def diff_link(desired: LinkState, actual: LinkState) -> LinkChanges:
    return LinkChanges(
        up=desired.up and not actual.up,
        mtu=desired.mtu if desired.mtu != actual.mtu else None,
        add=desired.addresses - actual.addresses,
        remove=actual.addresses - desired.addresses,
    )
