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

Roaming can also leave a pair on the wrong hub for good: a packet one end sent before its move
arrives after the other end's nudge, and each end's endpoint for the other is then a path through
a hub that works but that neither prefers, which `keep` allows. `Strays` notices an endpoint off
its first path for longer than any failover or failback takes, and names the peers whose first
path is to be written once more (`HubChoice.straighten`).
Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


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


@dataclass
class Strays:
    """Since when each overlay peer's endpoint has been off its first path."""

    limit: float  # seconds off the first path before it is written again
    since: dict[str, float] = field(default_factory=dict)

    def due(self, endpoints: Mapping[str, str | None], first: Mapping[str, str], now: float) -> frozenset[str]:
        """The peers (keys) off their first path for `limit` seconds. `endpoints`: the device's,
        `first`: each peer's preferred path. A peer named is forgotten: it gets `limit` again."""
        off = {k for k, want in first.items() if endpoints.get(k) not in (None, want)}
        self.since = {k: self.since.get(k, now) for k in off}
        due = frozenset(k for k, t in self.since.items() if now - t >= self.limit)
        for k in due:
            del self.since[k]
        return due
