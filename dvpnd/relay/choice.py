"""`transport: auto` (pure): over UDP or over TCP, per hub, from what the relay reports.

- On UDP, a hub moves to TCP when the relay's UDP probes to its WireGuard port go unanswered
  (for 3 s: spokeside.UDP_FAILS_AFTER) and the relay's WebSocket to it is up (TCP works).
- On TCP, it moves back when the probes have been answered for `holddown` seconds without a
  gap (prefer UDP: TCP-over-TCP suffers under loss; the hold-down keeps a flaky path from
  flapping).
- While the relay reports nothing (not running, not yet started), nothing moves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TransportJudge:
    holddown: float
    current: dict[str, str] = field(default_factory=dict)  # hub key -> "udp" | "tcp"
    since: dict[str, float] = field(default_factory=dict)  # hub key -> when it moved (wall time)
    switches: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def judge(self, hub: str, link: Mapping[str, Any] | None, now: float) -> bool:
        """Update `hub`'s transport from its relay link's report; True if it changed."""
        cur = self.current.setdefault(hub, "udp")
        self.since.setdefault(hub, now)
        if not link:
            return False
        udp_ok, ok_for, connected = link.get("udp_ok"), link.get("udp_ok_for"), bool(link.get("connected"))
        new = cur
        if cur == "udp" and udp_ok is False and connected:
            new, why = "tcp", "UDP to it goes unanswered; over TCP (its relay) now"
        elif cur == "tcp" and udp_ok and isinstance(ok_for, (int, float)) and ok_for >= self.holddown:
            new, why = "udp", f"UDP answered for {ok_for:.0f}s; back to UDP"
        if new == cur:
            return False
        self.current[hub], self.since[hub] = new, now
        self.switches[hub] = self.switches.get(hub, 0) + 1
        self.reasons[hub] = why
        return True
