"""A spoke's judgement of its hubs, end to end (more than one hub, confidential mode).

A hub whose forwarding is broken keeps its own tunnel alive, so its handshakes prove nothing.
The spoke therefore sends each hub, every `probe.interval`, a small ICMP echo to another
member's transit address behind that hub: only a hub that forwards gets an answer back (the
other spoke's kernel answers; no daemon needs to run there). Each round asks the same member
through every hub, taking turns among the members that answered lately, so one dead spoke
does not make a hub look dead. A member that stops answering through one hub while others still
do (a hub cut off from that member only) is reached through another hub: `HubChoice.bad`.

`HubJudge` is pure: answers in, a `HubChoice` out. A hub is up while some probe through it was
answered within `probe.window`; the overlay goes through the first hub in the config's order
that is up and has been up for `probe.holddown` (a hub that comes back is not used again at
once: no flapping), else through the first hub that is up at all, else it stays where it is
(nothing answers through any hub: a lone spoke, or the whole overlay down). A hub in use that
works is left only for a hub before it in the order (failback), never for one after it. `Prober` is the
thin part that sends and receives."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from dvpnd.config.model import ProbeConfig
from dvpnd.daemon.status import HubView
from dvpnd.overlay.plan import HubChoice

log = logging.getLogger("dvpnd.hubs")
STARTUP_GRACE = 5.0  # seconds every hub counts as up when the probes begin: the tunnels handshake first
MISSES_BAD = 2  # probes to one member through one hub unanswered in a row, each for a whole
# `probe.window`: that path is out (a late answer is no miss: a busy machine is not a cut)


@dataclass
class HubHealth:
    key: str
    name: str
    last_answer: float | None
    up_since: float | None
    probes: int = 0
    answers: int = 0

    def up(self, now: float, window: float) -> bool:
        return self.last_answer is not None and now - self.last_answer <= window


@dataclass
class HubJudge:
    hubs: Sequence[tuple[str, str]]  # (public key, name), preferred first
    probe: ProbeConfig
    started: float
    state: dict[str, HubHealth] = field(default_factory=dict)
    active: str | None = None
    failovers: int = 0
    reason: str = ""
    misses: dict[tuple[str, str], int] = field(default_factory=dict)  # (member, hub) -> probes unanswered
    bad: frozenset[tuple[str, str]] = frozenset()
    probing: bool = False  # whether the last round had a member to probe

    def __post_init__(self) -> None:
        # every hub starts up, as of the start, without a hold-down: the first is used until
        # the probes say otherwise
        for key, name in self.hubs:
            self.state[key] = HubHealth(key, name, self.started, self.started - self.probe.holddown)
        self.active = self.hubs[0][0] if self.hubs else None

    def begin(self, now: float) -> None:
        """The probes begin (or begin again, after a time with nobody to probe): every hub counts
        as up for STARTUP_GRACE more seconds, so that the hub whose tunnel to the other members
        happens to handshake first does not win (seen in the lab: a slower start, and the spokes
        began on their second hub)."""
        for h in self.state.values():
            h.last_answer = max(h.last_answer if h.last_answer is not None else now, now + STARTUP_GRACE)

    def targets_seen(self, now: float, present: bool) -> None:
        """Each round: with no other member to probe there is no evidence against any hub; the
        first round with one (the roster arrives only after dvpnd starts, or a lone spoke gets a
        fellow member) begins the probes, with the grace."""
        if not present:
            self.no_targets(now)
            self.probing = False
        elif not self.probing:
            self.begin(now)
            self.probing = True

    def sent(self, key: str, member: str | None = None) -> None:
        self.state[key].probes += 1

    def missed(self, key: str, member: str) -> None:
        """A probe to `member` through hub `key` went unanswered for a whole window."""
        self.misses[(member, key)] = self.misses.get((member, key), 0) + 1

    def answered(self, key: str, now: float, member: str | None = None) -> None:
        h = self.state[key]
        h.answers += 1
        if member is not None:
            self.misses[(member, key)] = 0
        if not h.up(now, self.probe.window):
            h.up_since = now
        h.last_answer = now

    def no_targets(self, now: float) -> None:
        """No other member to probe through the hubs (a lone spoke): no evidence against any hub."""
        for h in self.state.values():
            if not h.up(now, self.probe.window):
                h.up_since = now
            h.last_answer = now

    def eligible(self, h: HubHealth, now: float) -> bool:
        return h.up(now, self.probe.window) and h.up_since is not None and now - h.up_since >= self.probe.holddown

    def judge(self, now: float) -> tuple[HubChoice | None, bool]:
        """The choice now, and whether the active hub changed (the caller moves the overlay)."""
        if self.active is None:
            return None, False
        order = [self.state[k] for k, _ in self.hubs]
        up = [h for h in order if h.up(now, self.probe.window)]
        for h in order:  # a hub that went down starts its hold-down again when it comes back
            if not h.up(now, self.probe.window):
                h.up_since = None
        current = self.state[self.active]
        pick: HubHealth | None
        if current.up(now, self.probe.window):
            # a hub that works is left only for one before it that has been up a while (failback),
            # never for one after it (its own hold-down may have restarted at a blip)
            ahead = order[:order.index(current)]
            pick = next((h for h in ahead if self.eligible(h, now)), current)
        else:
            pick = next((h for h in up if self.eligible(h, now)), None) or (up[0] if up else None)
        changed = False
        if pick is not None and pick.key != self.active:
            was = self.state[self.active]
            if was.up(now, self.probe.window):
                self.reason = f"{pick.name} is up again (for {now - (pick.up_since or now):.0f}s): back to it"
            else:
                self.reason = (f"no answer through {was.name} for {now - (was.last_answer or now):.1f}s: "
                               f"moving to {pick.name}")
            self.active = pick.key
            self.failovers += 1
            changed = True
        bad = frozenset(k for k, n in self.misses.items() if n >= MISSES_BAD)
        # a member that answers again through a hub it was cut off from is put back on the
        # preferred path (with everyone, simply), as after a failback
        back = bool(self.bad - bad)
        self.bad = bad
        return HubChoice(active=self.active, usable=frozenset(h.key for h in up) or frozenset({self.active}),
                         moved=changed or back, bad=bad), changed

    def forget(self, members: set[str]) -> None:
        """Drop what is known of members no longer in the roster."""
        for k in [k for k in self.misses if k[0] not in members]:
            del self.misses[k]

    def view(self, now: float) -> tuple[HubView, ...]:
        out = []
        for key, _ in self.hubs:
            h = self.state[key]
            out.append(HubView(name=h.name, public_key=key, up=h.up(now, self.probe.window), in_use=key == self.active,
                               probes=h.probes, answers=h.answers,
                               last_answer_age=None if h.last_answer is None or h.answers == 0
                               else round(max(0.0, now - h.last_answer), 1)))
        return tuple(out)


# --- the thin part: ICMP echo over a raw socket (CAP_NET_RAW, which dvpnd's unit grants) ----

ECHO_REQUEST, ECHO_REPLY = 8, 0
SOL_RAW, ICMP_FILTER = 255, 1  # linux/icmp.h: the types set in the mask are not delivered
PAYLOAD = b"dvpn-probe"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def render_echo(ident: int, seq: int) -> bytes:
    head = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, _checksum(head + PAYLOAD), ident, seq) + PAYLOAD


def parse_reply(packet: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an echo reply in a raw IPv4 packet, or None."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:ihl + 8]
    if len(icmp) < 8 or icmp[0] != ECHO_REPLY or icmp[1] != 0:
        return None
    _, _, _, ident, seq = struct.unpack("!BBHHH", icmp)
    return ident, seq


class Prober:
    """Sends a probe through every hub each interval and feeds the answers to the judge."""

    def __init__(self, judge: HubJudge, targets: Callable[[], list[tuple[str, dict[str, IPv4Address]]]],
                 changed: Callable[[HubChoice], object], clock: Callable[[], float] = time.monotonic) -> None:
        # targets(): per other member, its key and its transit address behind each hub
        self.judge = judge
        self.targets = targets
        self.changed = changed
        self.clock = clock
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.seq = 0
        self.pending: dict[int, tuple[str, str, float]] = {}  # seq -> (hub key, member key, sent at)
        self.alive: dict[str, float] = {}  # member key -> its last answer through any hub
        self.last_bad: frozenset[tuple[str, str]] = frozenset()
        self.turn = 0
        self.last_usable: frozenset[str] | None = None
        self.sock: socket.socket | None = None

    def nudge(self, addresses: Sequence[IPv4Address]) -> None:
        """One echo to each overlay address, through the overlay device, right after this spoke
        moved its paths: the other end's WireGuard roams its endpoint for this spoke to the path
        the echo came by, so both ends of an idle conversation converge on the same hub without
        waiting for traffic (overlay peers have no keepalive). The answers are not counted."""
        if self.sock is None:
            return
        packet = render_echo(self.ident ^ 0xFFFF, 0)
        for addr in addresses:
            try:
                self.sock.sendto(packet, (str(addr), 0))
            except OSError:
                pass  # no session or route yet: the peer's first packet through the new path does it

    def _next_target(self, now: float) -> tuple[str, dict[str, IPv4Address]] | None:
        members = self.targets()
        if not members:
            return None
        if self.turn % 256 == 0:
            self.judge.forget({m for m, _ in members})
        recent = [m for m in members if now - self.alive.get(m[0], -1e9) <= 5 * self.judge.probe.window]
        pool = recent or members
        self.turn += 1
        return pool[self.turn % len(pool)]

    def expire(self, now: float) -> None:
        """Probes unanswered for a whole window count as misses (and are forgotten)."""
        window = self.judge.probe.window
        for seq in [s for s, (_, _, t) in self.pending.items() if now - t > window]:
            hub, member, _ = self.pending.pop(seq)
            self.judge.missed(hub, member)

    async def run(self, stopping: asyncio.Event) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.setblocking(False)
        # a raw socket is handed a copy of every ICMP packet the node gets (the other spokes'
        # probes too): let the kernel pass echo replies only
        sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", ~(1 << ECHO_REPLY) & 0xFFFFFFFF))
        self.sock = sock
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._receive, sock)
        try:
            while not stopping.is_set():
                now = self.clock()
                target = self._next_target(now)
                self.judge.targets_seen(now, target is not None)
                for key, _ in self.judge.hubs:
                    addr = target[1].get(key) if target else None
                    if addr is None or target is None:
                        continue
                    self.seq = (self.seq + 1) & 0xFFFF
                    self.pending[self.seq] = (key, target[0], now)
                    self.judge.sent(key, target[0])
                    try:
                        sock.sendto(render_echo(self.ident, self.seq), (str(addr), 0))
                    except OSError:
                        pass  # no route through this hub right now: no answer, which says so
                self.expire(now)
                choice, moved = self.judge.judge(now)
                if moved:
                    log.warning("overlay: %s", self.judge.reason)
                if choice is not None and (moved or choice.usable != self.last_usable or choice.bad != self.last_bad):
                    # a hub down (or back), or a member out of reach through one hub, also changes
                    # which roamed paths may stay
                    self.last_usable, self.last_bad = choice.usable, choice.bad
                    self.changed(choice)
                await asyncio.sleep(self.judge.probe.interval)  # (stopping ends the task itself)
        finally:
            loop.remove_reader(sock.fileno())
            self.sock = None
            sock.close()

    def _receive(self, sock: socket.socket) -> None:
        while True:
            try:
                packet = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            got = parse_reply(packet)
            if got is None or got[0] != self.ident:
                continue
            hit = self.pending.pop(got[1], None)
            if hit is None:
                continue
            now = self.clock()
            self.judge.answered(hit[0], now, hit[1])
            self.alive[hit[1]] = now
