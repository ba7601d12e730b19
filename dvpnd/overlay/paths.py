"""The path selector: the one owner of overlay peers' endpoints.

An overlay peer (another spoke) can be reached by one or more paths: today its transit address
behind the hub; with more hubs, one per hub; with the TCP fallback, a loopback socket of the
relay. The selector decides which endpoint the device should have, and when to leave the
device's own choice alone: WireGuard roams to wherever the peer's authenticated packets last
came from, and rewriting that on every pass would break the return path. So the device's
endpoint stays while it is one of the peer's paths; otherwise the first (preferred) path is
written. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PeerPaths:
    """A peer's candidate endpoints ("10.89.0.12:51821"), preferred first."""

    endpoints: tuple[str, ...]

    def choose(self, current: str | None) -> str | None:
        """The endpoint to write, or None to keep the device's."""
        if not self.endpoints or current in self.endpoints:
            return None
        return self.endpoints[0]
