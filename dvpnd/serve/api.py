"""What the front doors (status page, metrics, control socket) may see of the daemon and ask of
it: a read-only `View` that publishes one `Published` value, built in one place, and a
`Commands` interface whose every answer is an `Outcome`. They never see the Daemon itself."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from dvpnd.daemon.status import Snapshot


@dataclass(frozen=True)
class Counters:
    """The daemon's in-memory counters (cheap, always current)."""

    reconcile_count: int = 0
    reconcile_errors: int = 0
    reconcile_duration: float = 0.0
    device_writes: int = 0
    firewall_applies: int = 0
    firewall_rules: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Published:
    """What every front door shows: the latest snapshot with the database's current view and
    the counters merged in, so /status, /metrics and `dvpnctl status` agree. `now` is the
    moment its peers are judged at (up, stale): the same one the daemon's log judged them at."""

    snapshot: Snapshot
    counters: Counters
    ready: bool
    stale_after: int
    now: float


@dataclass(frozen=True)
class Outcome:
    """The answer to a command: whether it worked, what is wrong, whether that is the input's
    fault (dvpnctl exits 2 then, not 1), and what the command returns."""

    ok: bool
    problems: tuple[str, ...] = ()
    bad_input: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    def reply(self) -> dict[str, Any]:
        """The control socket's JSON reply."""
        return {"ok": self.ok, "problems": list(self.problems), "bad_input": self.bad_input, **self.data}


class View(Protocol):
    def published(self) -> Published: ...

    async def fresh(self) -> None:
        """Bring the snapshot up to date before showing it (a device read at most once a second,
        shared by callers at the same moment): a node nobody asks about reads its device less."""
        ...

    def roster_document(self) -> tuple[bytes, str] | None:
        """The verified roster document in force and its ETag (confidential mode), or None."""
        ...

    def roster_changed(self) -> asyncio.Event:
        """An event set when the roster in force is replaced (or dvpnd stops); taken before
        reading the document, it wakes a request that holds on to an unchanged roster."""
        ...

    async def roster_offer(self, document: bytes, origin: str) -> Outcome:
        """A roster document handed over by a spoke (a hub that was down when it changed):
        verified and judged like any other; refused ones change nothing."""
        ...


class Commands(Protocol):
    async def reload(self) -> Outcome: ...

    async def rekey(self) -> Outcome: ...

    async def firewall_table(self) -> Outcome: ...

    async def firewall_apply(self) -> Outcome: ...

    async def backup_now(self) -> Outcome: ...

    async def down(self) -> Outcome: ...

    async def roster_publish(self, path: str) -> Outcome: ...
