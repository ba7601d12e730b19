"""The path selector: the one owner of overlay peers' endpoints.

An overlay peer (another spoke) can be reached by one or more paths: today its transit address
behind the hub; with more hubs, one per hub; with the TCP fallback, a loopback socket of the
relay. The selector decides which endpoint the device should have, and when to leave the
device's own choice alone: WireGuard roams to wherever the peer's authenticated packets last
came from, and rewriting that on every pass would break the return path. So the device's
endpoint stays while it is one of the peer's paths; otherwise the first (preferred) path is
written. With more than one hub, `keep` narrows what may stay to the paths through hubs that
work now (a path through a dead hub is left at once), and right after the spoke changes hubs
(a failover, or a failback after the hold-down) to the new hub's path alone, once: both ends of
a conversation then converge on the hub both prefer, and roaming brings the return path along.
Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PeerPaths:
    """A peer's candidate endpoints ("10.89.0.12:51821"), preferred first."""

    endpoints: tuple[str, ...]
    keep: frozenset[str] | None = None  # the endpoints the device may keep (None: all of them)

    def choose(self, current: str | None) -> str | None:
        """The endpoint to write, or None to keep the device's."""
        keep = self.endpoints if self.keep is None else self.keep
        if not self.endpoints or current in keep or current == self.endpoints[0]:
            return None  # (nothing kept, and the device has the best there is already)
        return self.endpoints[0]
