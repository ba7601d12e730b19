"""dvpnd: the daemon. One asyncio loop runs the reconcile passes, the snapshot refresher,
the status page, the control socket and the systemd watchdog.

Stopping dvpnd (SIGTERM, or a crash) leaves the interface, its peers and the firewall in
place: the data plane keeps working without the control plane. `dvpnctl down` is what
removes them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvpnd import netif
from dvpnd.config import peers as runbook
from dvpnd.config.load import load_config
from dvpnd.config.model import DEFAULT_CONFIG, Config, HubSpec
from dvpnd.daemon.reconcile import Reconciler, ReconcileResult
from dvpnd.daemon.relayctl import RelayControl
from dvpnd.daemon.rosterfetch import fetch_loop
from dvpnd.daemon.rosterkeeper import RosterKeeper
from dvpnd.daemon.status import PeerView, RelayView, Snapshot, TransportView, peer_views, routed_names
from dvpnd.errors import EXIT_CONFIG, EXIT_FAILURE, ConfigError, DvpnError
from dvpnd.firewall.nft import list_table_text
from dvpnd.overlay.health import HubJudge, Prober
from dvpnd.overlay.paths import Strays
from dvpnd.overlay.plan import HubChoice, peer_paths
from dvpnd.relay.choice import TransportJudge
from dvpnd.relay.plan import render_relay
from dvpnd.roster.model import Member, RosterError
from dvpnd.serve import control
from dvpnd.serve import http as httpapi
from dvpnd.serve.api import Counters, Outcome, Published
from dvpnd.util.fsutil import read_regular, write_yaml
from dvpnd.util.log import REDACTOR, set_level, setup_logging
from dvpnd.util.systemd import Notifier
from dvpnd.wireguard.device import DeviceState, rotation_done

if TYPE_CHECKING:
    from dvpnd.dns.service import DnsService
    from dvpnd.postgres.pgbr_supervisor import BackRest
    from dvpnd.postgres.supervisor import DbSupervisor

log = logging.getLogger("dvpnd.daemon")
SNAPSHOT_INTERVAL = 1.0
# A node nobody asks about reads its device less often when a read costs more (a hub with a
# thousand peers): at most this share of a core, and at least every SNAPSHOT_MAX_INTERVAL (the peer
# state log, the hub's endpoint memory; systemd's watchdog allows 30 s). Front doors read on demand.
SNAPSHOT_BUDGET = 0.001
SNAPSHOT_MAX_INTERVAL = 10.0
FRESH_WAIT = 1.0  # the longest a front door waits for a read on demand
ROTATION_POLL = 0.1
SETTLE = 5.0  # seconds a relay link keeps delivering after its hub moved back to UDP (transport auto)
STRAY = 5.0  # seconds an overlay peer's endpoint may stay off its first path (see overlay/paths.py)


def snapshot_interval(cost: float, every_second: bool) -> float:
    """Seconds until the next background snapshot, given the CPU seconds the last one took:
    every second while a snapshot is cheap or the node acts on it each second (a spoke's hub
    judge, transport auto); else spaced out to stay within SNAPSHOT_BUDGET. (A key rotation
    under way reads at every ROTATION_POLL, whatever this says.)"""
    if every_second:
        return SNAPSHOT_INTERVAL
    return min(SNAPSHOT_MAX_INTERVAL, max(SNAPSHOT_INTERVAL, cost / SNAPSHOT_BUDGET))


def own_address(c: Config) -> str:
    """The address the node has: a confidential hub has none in the overlay, only its transit one."""
    return str(c.hub_transit_address) if c.confidential and c.is_hub else str(c.address)


class Daemon:
    def __init__(self, config_path: Path, config: Config, clock: Callable[[], float] = time.time):
        self.config_path = config_path
        self.config = config
        self.clock = clock  # wall time for the roster's expiry; tests move it
        self.reconciler = Reconciler(config)
        self.rosters = RosterKeeper(config, clock) if config.confidential else None
        self._roster_event = asyncio.Event()  # set (and replaced) when the roster in force changes
        self.lock = asyncio.Lock()
        self._snapshot_lock = asyncio.Lock()
        self._snapshot_cost = 0.0  # CPU seconds the last read of the device and its snapshot took
        self._next_read = 0.0  # (monotonic) when the background reads again
        self._fresh_task: asyncio.Future[None] | None = None  # the front doors' shared read
        self._names: tuple[Config | None, dict[str, tuple[str, str]]] = (None, {})
        self.ready = False
        self.reconcile_error: str | None = None
        self.reconcile_count = 0
        self.reconcile_errors = 0
        self.last_reconcile_duration = 0.0
        self.snapshot: Snapshot = self._empty_snapshot()
        self.notifier = Notifier()
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.wake = asyncio.Event()
        self._peer_states: dict[str, str] = {}
        self._judged_at = 0.0  # (when _peer_states was judged)
        self.last_device: DeviceState | None = None
        self.db: DbSupervisor | None = None
        self.backrest: BackRest | None = None
        if config.postgres.enabled:  # (imported only by a node that runs a database)
            from dvpnd.postgres.supervisor import DbSupervisor

            self.db = DbSupervisor(config)
            if config.backup.enabled:
                from dvpnd.postgres.pgbr_supervisor import BackRest

                self.backrest = BackRest(config)
        self.relay = RelayControl(config)
        self.relay_status: dict[str, Any] | None = None  # what dvpn-relay last reported
        self.transport_judge = TransportJudge(config.relay.udp_holddown)
        self.dns: DnsService | None = None
        self._relay_inputs: tuple[object, ...] | None = None
        self._last_result: ReconcileResult | None = None
        self.relay_active: set[str] = set()  # hubs on auto whose relay link delivers to WireGuard
        self._resume_transports()
        self.hub_judge: HubJudge | None = None
        self.prober: Prober | None = None
        self.strays = Strays(max(STRAY, 3 * config.probe.window))
        if config.confidential and not config.is_hub and config.more_hubs:
            self.hub_judge = HubJudge([(h.public_key, h.name) for h in config.hubs], config.probe, time.monotonic())
            self.reconciler.hub_choice = self.hub_judge.judge(time.monotonic())[0]

    def _empty_snapshot(self) -> Snapshot:
        c = self.config
        return Snapshot(taken=time.time(), node=c.name, role=c.role, interface=c.wireguard.interface,
                        overlay_ip=own_address(c), backend=c.wireguard.backend, interface_up=False)

    # --- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, why: str, force_firewall: bool = False) -> bool:
        async with self.lock:
            try:
                result = await asyncio.to_thread(self.reconciler.reconcile, None, force_firewall)
            except DvpnError as e:
                self.reconcile_errors += 1
                if str(e) != self.reconcile_error:
                    log.error("reconcile (%s) failed: %s", why, e)
                self.reconcile_error = str(e)
                return False
            except Exception as e:
                self.reconcile_errors += 1
                log.exception("reconcile (%s) failed unexpectedly: %s", why, e)
                self.reconcile_error = f"unexpected: {e}"
                return False
            if result.device is not None:  # (None: a quiet pass, the device as the last one left it)
                self.last_device = result.device
            if self.reconcile_error:
                log.info("reconcile succeeded again")
            self.reconcile_error = None
            self.reconcile_count += 1
            self.last_reconcile_duration = result.duration
            if not self.ready:
                self.ready = True
                log.info("first reconcile done in %.2fs: %s %s up with %d peers",
                         result.duration, self.config.role, self.config.wireguard.interface,
                         len(self.last_device.peers) if self.last_device else 0)
            self._last_result = result
            await self._sync_relay(result)
        # What was just applied is what the next answer shows: the pass's own read of the device
        # (after its writes), not a second one. A quiet pass applied nothing to the device: the
        # snapshot's own cadence reads it (but a link or firewall it changed shows at once).
        if result.device is not None or result.link_changed or result.firewall_changed:
            await self.refresh_snapshot(result.device)
        return True

    def _resume_transports(self) -> None:
        """After a restart, a hub on auto that the running relay carries over TCP (UDP failing,
        its WebSocket up) stays on TCP: the first pass must not put it back on a dead UDP path."""
        links = {x.get("name"): x for x in (self._read_relay_status() or {}).get("links", [])
                 if isinstance(x, dict)}
        for h in self.config.hubs:
            x = links.get(h.name)
            if h.transport == "auto" and x and x.get("connected") and x.get("udp_ok") is False:
                self.transport_judge.current[h.public_key] = "tcp"
                log.info("hub %s: its relay carries it over TCP (UDP still fails); staying on TCP", h.name)
        self.reconciler.transports = dict(self.transport_judge.current)
        self.relay_active = {k for k, t in self.transport_judge.current.items() if t == "tcp"}

    def _read_relay_status(self) -> dict[str, Any] | None:
        self.relay_status = self.relay.status() if self.config.needs_relay else None
        return self.relay_status

    async def _judge_transports(self) -> None:
        """transport: auto: move a hub's tunnel between UDP and TCP on the relay's report.

        The relay's link delivers to WireGuard only while its hub is on TCP: a link still open
        after the move back to UDP (it stays a while) would otherwise hand WireGuard a datagram
        the hub sent before it roamed, and WireGuard would roam back to the relay. So a move
        changes the relay first and waits until it reports the change, then moves WireGuard's
        endpoint, then sends a packet through the tunnel that makes the hub's WireGuard roam
        along at once. For SETTLE seconds after a move back, each pass puts the endpoint back
        on UDP if it roamed anyway."""
        links = {x.get("name"): x for x in (self.relay_status or {}).get("links", []) if isinstance(x, dict)}
        judge, moved, now = self.transport_judge, [], time.time()
        for h in self.config.hubs:
            if h.transport == "auto" and judge.judge(h.public_key, links.get(h.name), now):
                log.warning("hub %s: %s", h.name, judge.reasons[h.public_key])
                moved.append(h.name)
        settling = [k for k, t in judge.current.items() if t == "udp" and judge.switches.get(k)
                    and now - judge.since[k] < SETTLE]
        if not moved and not settling:
            return
        self.relay_active = {k for k, t in judge.current.items() if t == "tcp"}
        if moved and self._last_result is not None:
            await self._sync_relay(self._last_result)  # (written and signalled only if it changed)
            await self._relay_reports(self.relay_active)
        self.reconciler.transports = dict(judge.current)
        if await self.reconcile(f"transport of {', '.join(moved)}" if moved else "transport settling"):
            await asyncio.to_thread(self._nudge_hubs)

    async def _relay_reports(self, active: set[str], timeout: float = 0.5) -> None:
        """Wait (briefly) until the relay's status shows which links deliver to WireGuard."""
        names = {h.public_key: h.name for h in self.config.hubs}
        want = {names[k] for k in active if k in names}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = await asyncio.to_thread(self.relay.status)
            got = {x.get("name") for x in (st or {}).get("links", []) if isinstance(x, dict) and x.get("active")}
            auto = {h.name for h in self.config.hubs if h.transport == "auto"}
            if got & auto == want & auto:
                return
            await asyncio.sleep(0.01)

    def _nudge_hubs(self) -> None:
        """One empty datagram to each hub's transit address (its discard port), through the
        tunnel: the hub's WireGuard roams to the path it came by at once, instead of at the
        spoke's next keepalive. The hub's firewall drops it after WireGuard has seen it."""
        c = self.config
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for h in c.hubs:
                addr = c.transit_address_via(h, c.hub_address) if c.confidential else c.hub_address
                try:
                    s.sendto(b"", (str(addr), 9))
                except OSError:
                    pass

    async def _sync_relay(self, result: ReconcileResult) -> None:
        """The relay's configuration after a pass (the spokes it carries follow the roster or the
        peers); written only when something it depends on changed. A failure is logged: it stops
        no tunnel over UDP."""
        c = self.config
        tunnel = result.transit or result.device or self.last_device
        if tunnel is None:
            return
        if c.is_hub:
            roster = self.reconciler.roster
            keys: tuple[str, ...] = tuple(sorted(m.transit_key for m in roster.members)) if c.confidential and roster \
                else tuple(sorted({k for p in c.peers for k in (p.public_key, p.next_public_key) if k}))
        else:
            keys = ()
        udp = dict(self.reconciler.udp_endpoints)
        active = frozenset(self.relay_active)
        inputs = (c, self.reconciler.private_key, tunnel.listen_port, keys, udp, active)
        if inputs == self._relay_inputs and (not c.needs_relay or not self.relay.spawns
                                             or self.relay.running_pid() is not None):
            return
        try:
            desired = render_relay(c, self.reconciler.private_key or "", tunnel.listen_port or None, keys, udp,
                                   active)
            await asyncio.to_thread(self.relay.apply, desired)
        except (OSError, ValueError, DvpnError) as e:
            log.error("relay: %s", e)
            return
        self._relay_inputs = inputs

    async def reload(self) -> Outcome:
        """Re-read the config; on problems keep everything as it was and report them."""
        self.notifier.reloading()
        try:
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as e:
                for p in e.problems:
                    log.error("reload rejected: %s", p)
                return Outcome(False, tuple(e.problems), bad_input=True)
            old = self.config
            # What the running daemon was built around: changing it needs a restart.
            fixed = {
                "role": new.role != old.role,
                "state_dir": new.state_dir != old.state_dir,
                "control_socket": new.control_socket != old.control_socket,
                "wireguard.interface/private_key_file": (new.wireguard.interface, new.wireguard.private_key_file)
                != (old.wireguard.interface, old.wireguard.private_key_file),
                "postgres.enabled/backup.enabled": (new.postgres.enabled, new.backup.enabled)
                != (old.postgres.enabled, old.backup.enabled),
                "backup.pgbackrest": new.backup.pgbackrest != old.backup.pgbackrest,
                "dns": new.dns != old.dns,
                "hubs/probe": bool(new.more_hubs or old.more_hubs) and (
                    [_route_of(h) for h in new.hubs], new.probe) != ([_route_of(h) for h in old.hubs], old.probe),
                "overlay.mode/authority/transit_interface/private_key_file": (
                    new.overlay.mode, new.overlay.authority, new.overlay.transit_interface,
                    new.overlay.private_key_file) != (old.overlay.mode, old.overlay.authority,
                                                      old.overlay.transit_interface, old.overlay.private_key_file),
            }
            changed = [k for k, differs in fixed.items() if differs]
            if changed:
                msg = f"{self.config_path}: changing {', '.join(changed)} needs a restart of dvpnd"
                log.error("reload rejected: %s", msg)
                return Outcome(False, (msg,), bad_input=True)
            await self._adopt(new)
            log.info("configuration reloaded from %s (%d peers)", self.config_path, len(new.peers))
            if await self.reconcile("reload"):
                return Outcome(True)
            # A refused reload leaves the daemon where it was: not the new config half applied,
            # nor a later periodic pass applying it anyway.
            problem = self.reconcile_error or "reconcile failed"
            log.error("reload: the new configuration could not be applied (%s); back to the previous one", problem)
            await self._adopt(old)
            await self.reconcile("reload undone")
            return Outcome(False, (f"{problem}; the previous configuration stays in force",))
        finally:
            self.notifier.reloaded(self.status_line())

    async def _adopt(self, config: Config) -> None:
        async with self.lock:
            self.config = config
            self.reconciler.config = config
            self.relay.config = config
            self.transport_judge.holddown = config.relay.udp_holddown
            if self.rosters is not None:
                self.rosters.config = config
            if self.db is not None:
                self.db.config = config
            set_level(config.log_level)

    async def finish_rotations(self) -> None:
        """A rotating spoke whose new key has handshaken: make the new key its only key."""
        device = self.last_device
        if device is None:
            return
        done = []
        for p in self.config.peers:
            if not p.next_public_key:
                continue
            cur, new = device.peers.get(p.public_key), device.peers.get(p.next_public_key)
            if new is not None and rotation_done(cur.last_handshake if cur else None, new.last_handshake):
                done.append(p)
        if not done:
            return
        for p in done:
            try:
                path = runbook.peer_file_of(self.config, p.name)
                doc = runbook.render_peer_file(p.name, p.next_public_key or "", p.address)
                await asyncio.to_thread(write_yaml, path, doc)
                log.info("spoke %s rotated to its new key %s", p.name, p.next_public_key)
            except DvpnError as e:
                log.warning("spoke %s uses its new key; finish by hand: %s", p.name, e)
        await self.reload()

    async def rekey(self) -> Outcome:
        """Load the private key file again (after `dvpnctl rotate-key --commit`) and apply it."""
        async with self.lock:
            try:
                await asyncio.to_thread(self.reconciler.load_key)
            except DvpnError as e:
                return Outcome(False, (str(e),))
            assert self.reconciler.private_key is not None
            REDACTOR.add_private_key(self.reconciler.private_key)
        log.info("private key reloaded; public key now %s", self.reconciler.public_key)
        ok = await self.reconcile("new private key")
        return Outcome(ok, () if ok else (self.reconcile_error or "reconcile failed",))

    async def reconcile_loop(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            ok = await self.reconcile("periodic" if self.ready else "start")
            if ok:
                await self.finish_rotations()
                self.notifier.ready(self.status_line())
            delay = self.config.reconcile_interval if ok else min(backoff, self.config.reconcile_interval)
            backoff = 1.0 if ok else min(backoff * 2, 30.0)
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    # --- snapshot ----------------------------------------------------------------------------

    def _read_snapshot(self, device: DeviceState | None = None) -> Snapshot:
        """The snapshot, reading the device unless `device` is a read just made."""
        c = self.config
        lnk = netif.read_link(c.wireguard.interface)
        backend = self.reconciler.backend
        if device is None and backend is not None and lnk is not None:
            try:
                device = backend.read()
            except DvpnError as e:
                log.debug("snapshot: %s", e)
        try:
            free = shutil.disk_usage(c.state_dir).free
        except OSError:
            free = 0
        fw = self.reconciler.firewall_state
        peers = self._peer_views(device)
        return Snapshot(
            taken=time.time(), node=c.name, role=c.role, interface=c.wireguard.interface,
            overlay_ip=own_address(c), backend=backend.name if backend else c.wireguard.backend,
            interface_up=bool(lnk and lnk.up and device is not None),
            peers=peers, mode=c.overlay.mode,
            roster=self.rosters.view(self.reconciler.membership.problem) if self.rosters else None,
            disk_free_bytes=free, ready=self.ready, reconcile_error=self.reconcile_error,
            firewall_error=fw.error, firewall_applied=fw.applied,
            extra=self.counters().as_dict(),
            postgres=self.db.view if self.db else None,
            pgbackrest=self.backrest.snapshot(self._is_primary()) if self.backrest is not None else None,
            hubs=self.hub_judge.view(time.monotonic()) if self.hub_judge else (),
            failovers=self.hub_judge.failovers if self.hub_judge else 0,
            **relay_views(c, self._read_relay_status(), self.transport_judge),
            dns=self.dns.view() if self.dns is not None else None,
        )

    def _peer_views(self, device: DeviceState | None) -> tuple[PeerView, ...]:
        c = self.config
        if not c.confidential:
            if self._names[0] is not c:  # (built once per config: a hub's thousand names)
                self._names = (c, routed_names(c))
            return peer_views(c, device, self._names[1]) if device is not None else ()
        roster = self.rosters.roster if self.rosters else None
        members = roster.members if roster else ()
        if c.is_hub:
            names = {m.transit_key: (m.name, str(m.address)) for m in members}
            return peer_views(c, device, names) if device is not None else ()
        out: tuple[PeerView, ...] = ()
        tb = self.reconciler.transit_backend
        if tb is not None and c.hubs:
            try:
                transit = tb.read()
                out = peer_views(c, transit, {h.public_key: (h.name, str(c.transit_address_via(h, c.hub_address)))
                                              for h in c.hubs}, interface=c.overlay.transit_interface)
            except DvpnError as e:
                log.debug("snapshot: %s", e)
        if device is not None:
            names = {m.overlay_key: (m.name, str(m.address)) for m in members}
            out += peer_views(c, device, names, interface=c.wireguard.interface, on_demand=True)
        return out

    def counters(self) -> Counters:
        """In-memory counters (cheap, always current)."""
        fw = self.reconciler.firewall_state
        return Counters(reconcile_count=self.reconcile_count, reconcile_errors=self.reconcile_errors,
                        reconcile_duration=self.last_reconcile_duration,
                        device_writes=self.reconciler.device_writes,
                        firewall_applies=fw.applies, firewall_rules=fw.rule_count)

    def published(self) -> Published:
        """What every front door shows, built here only: the last snapshot with the database's
        current view and the counters merged in."""
        snap, counters, now = self.snapshot, self.counters(), time.time()
        self._log_peer_changes(snap, now)  # (a peer shown stale is a peer logged stale)
        if self.db is not None:
            snap = replace(snap, postgres=self.db.view,
                           pgbackrest=self.backrest.snapshot(self._is_primary()) if self.backrest else None)
        return Published(replace(snap, extra=counters.as_dict()), counters, self.ready, self.config.stale_after, now)

    # --- commands (the control socket's, through serve.api.Commands) --------------------------

    async def firewall_table(self) -> Outcome:
        text = await asyncio.to_thread(list_table_text)
        return Outcome(text is not None, () if text is not None else ("no inet dvpn table",), data={"table": text})

    async def firewall_apply(self) -> Outcome:
        ok = await self.reconcile("firewall apply requested", force_firewall=True)
        fw = self.reconciler.firewall_state
        return Outcome(ok and fw.error is None, tuple(e for e in (fw.error, self.reconcile_error) if e))

    def _is_primary(self) -> bool:
        view = self.db.view if self.db is not None else None
        return view is not None and view.up and view.role == "primary"

    async def backup_now(self) -> Outcome:
        if self.backrest is None:
            return Outcome(False, (f"{self.config_path}: backups are not enabled (backup section)",), bad_input=True)
        if not self._is_primary():
            return Outcome(False, ("this spoke's PostgreSQL is not the primary: only the primary backs up "
                                   "(one writer per stanza)",))
        try:
            ok = await self.backrest.backup_now()
        except DvpnError as e:
            return Outcome(False, (str(e),))
        return Outcome(ok, tuple(f"pgBackRest {op}: {why}" for op, why in self.backrest.errors.items()),
                       data={"pgbackrest": self.backrest.view()})

    async def roster_publish(self, path: str) -> Outcome:
        """Offer a roster document from a file (`dvpnctl roster publish`; the hub serves it on)."""
        if self.rosters is None:
            return Outcome(False, (f"{self.config_path}: overlay.mode is not confidential: no roster here",),
                           bad_input=True)
        try:
            text = await asyncio.to_thread(read_regular, Path(path), 4 << 20, True)
            if text is None:
                return Outcome(False, (f"{path}: no such file",), bad_input=True)
        except DvpnError as e:
            return Outcome(False, (str(e),), bad_input=True)
        return await self.roster_offer(text.encode(), path)

    async def roster_offer(self, document: bytes, origin: str) -> Outcome:
        if self.rosters is None:
            return Outcome(False, ("overlay.mode is not confidential: no roster here",), bad_input=True)
        try:
            adopted = await asyncio.to_thread(self.rosters.offer, document, origin)  # (the disk: off the loop)
        except RosterError as e:
            return Outcome(False, (str(e),), bad_input=True, data={"reason": e.reason})
        if adopted:
            await self.roster_adopted()
        r = self.rosters.roster
        assert r is not None
        return Outcome(True, data={"serial": r.serial, "members": len(r.members), "adopted": adopted})

    async def roster_adopted(self) -> None:
        assert self.rosters is not None
        self.reconciler.roster = self.rosters.roster
        self._wake_roster_waiters()
        await self.reconcile(f"roster serial {self.rosters.roster.serial if self.rosters.roster else '?'}")

    def _other_members(self) -> list[Member]:
        roster = self.rosters.roster if self.rosters else None
        me = self.reconciler.overlay_public_key
        return [m for m in (roster.members if roster else ()) if m.overlay_key != me]

    def _probe_targets(self) -> list[tuple[str, dict[str, IPv4Address]]]:
        """The other members, each with its transit address behind each hub (what the probes ask)."""
        c = self.config
        return [(m.overlay_key, {h.public_key: c.transit_address_via(h, m.address) for h in c.hubs})
                for m in self._other_members()]

    def _hub_alive(self, key: str) -> Callable[[], bool]:
        judge = self.hub_judge
        if judge is None:
            return lambda: True
        return lambda: judge.state[key].up(time.monotonic(), judge.probe.window)

    def _hub_changed(self, choice: HubChoice) -> None:
        current = self.reconciler.hub_choice
        if current is not None and current.moved and not choice.moved and current.active == choice.active:
            choice = replace(choice, moved=True)  # the move is not done yet
        self.reconciler.hub_choice = choice
        asyncio.ensure_future(self._move_overlay(choice))

    async def _move_overlay(self, choice: HubChoice) -> None:
        judge = self.hub_judge
        assert judge is not None
        ok = await self.reconcile(judge.reason)
        if ok and self.reconciler.hub_choice is choice:
            # moved once; from now on WireGuard's roaming may keep any hub that works
            self.reconciler.hub_choice = replace(choice, moved=False)
            if choice.moved and self.prober is not None:
                # the other ends follow at once, not at their next packet (see Prober.nudge)
                self.prober.nudge([m.address for m in self._other_members()])

    async def _straighten(self, snap: Snapshot) -> None:
        """Put back on its first path an overlay peer whose endpoint roamed off it and stayed
        (see overlay/paths.py), and nudge it so that its end roams along."""
        choice = self.reconciler.hub_choice
        if choice is None or choice.moved or choice.straighten:
            return  # (a move is under way: it writes every first path itself)
        members = {m.overlay_key: m for m in self._other_members()}
        first = {k: peer_paths(self.config, m, choice).endpoints[0] for k, m in members.items()}
        due = self.strays.due({p.public_key: p.endpoint for p in snap.peers if p.public_key in first},
                              first, time.monotonic())
        if not due:
            return
        log.info("overlay: %s reached off its preferred path for %.0f s; putting it back",
                 ", ".join(sorted(members[k].name for k in due)), self.strays.limit)
        self.reconciler.hub_choice = straight = replace(choice, straighten=due)
        ok = await self.reconcile("overlay path straightened")
        if self.reconciler.hub_choice is straight:
            self.reconciler.hub_choice = choice
        if ok and self.prober is not None:
            self.prober.nudge([members[k].address for k in due])

    def _wake_roster_waiters(self) -> None:
        event, self._roster_event = self._roster_event, asyncio.Event()
        event.set()

    def roster_changed(self) -> asyncio.Event:
        return self._roster_event

    def roster_document(self) -> tuple[bytes, str] | None:
        kept = self.rosters.kept if self.rosters is not None else None  # (one read: a document and its own ETag)
        return None if kept is None else (kept.document, kept.etag)

    def _timed_read(self, device: DeviceState | None) -> tuple[Snapshot, float]:
        t0 = time.thread_time()
        snap = self._read_snapshot(device)
        return snap, time.thread_time() - t0

    async def refresh_snapshot(self, device: DeviceState | None = None) -> Snapshot:
        async with self._snapshot_lock:
            return await self._refresh_locked(device)

    async def _refresh_locked(self, device: DeviceState | None = None) -> Snapshot:
        snap, cost = await asyncio.to_thread(self._timed_read, device)
        if device is None:  # (a read of the device: what the next one will cost)
            self._snapshot_cost = cost
        # the background's next read: every snapshot counts, whoever asked for it
        self._next_read = time.monotonic() + snapshot_interval(self._snapshot_cost, self._every_second())
        self.snapshot = snap
        if self.config.is_hub and snap.peers:
            endpoints = {p.public_key: p.endpoint for p in snap.peers}
            await asyncio.to_thread(self.reconciler.endpoint_memory.remember, endpoints)
        self._log_peer_changes(snap, snap.taken)
        return snap

    def _snapshot_young(self) -> bool:
        return time.time() - self.snapshot.taken <= SNAPSHOT_INTERVAL

    async def fresh(self) -> None:
        """A front door is about to show the snapshot: read the device now if the last read is
        more than SNAPSHOT_INTERVAL old. Callers at the same moment share one read, so a flood of
        status requests costs no more than one read a second; and none waits more than
        FRESH_WAIT for it (a frozen wireguard-go answers nothing for seconds): it shows the last
        snapshot then, and the read lands for the next one."""
        if self._snapshot_young():
            return
        task = self._fresh_task
        if task is None or task.done():
            task = self._fresh_task = asyncio.ensure_future(self._refresh_if_old())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # (taken, if nobody waits)
        try:
            await asyncio.wait_for(asyncio.shield(task), FRESH_WAIT)
        except TimeoutError:
            pass
        except Exception as e:  # noqa: BLE001  (the loop's next read says it, at warning)
            log.debug("snapshot on demand: %s", e)

    async def _refresh_if_old(self) -> None:
        async with self._snapshot_lock:
            if not self._snapshot_young():  # (a read that finished while this one waited will do)
                await self._refresh_locked()

    def _every_second(self) -> bool:
        return self.hub_judge is not None or any(h.transport == "auto" for h in self.config.hubs)

    async def snapshot_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                # (a key rotation under way reads at every ROTATION_POLL below)
                if time.monotonic() >= self._next_read or self.reconciler.pending_rotations():
                    await self.refresh_snapshot()
                    self.notifier.status(self.status_line())
                snap = self.snapshot
                if self.hub_judge is not None:
                    await self._straighten(snap)
                if any(h.transport == "auto" for h in self.config.hubs):
                    await self._judge_transports()
                if self.config.needs_relay and self.relay.spawns and self._last_result is not None:
                    await self._sync_relay(self._last_result)  # (starts a relay that died; else returns)
                if self.ready and snap.interface_up:
                    self.notifier.watchdog()
                rotating = self.reconciler.pending_rotations()
                if rotating and self._rotation_ready(snap, rotating):
                    self.wake.set()
            except Exception as e:  # noqa: BLE001
                log.warning("snapshot failed: %s", e)
            # While a spoke switches keys, look often: its traffic waits for its address to move.
            await asyncio.sleep(ROTATION_POLL if self.reconciler.pending_rotations() else SNAPSHOT_INTERVAL)

    def _rotation_ready(self, snap: Snapshot, rotating: tuple[tuple[str, str], ...]) -> bool:
        by_key = {p.public_key: p for p in snap.peers}
        for _name, new_key in rotating:
            new = by_key.get(new_key)
            if new is not None and new.last_handshake is not None and not new.allowed_ips:
                return True
        return False

    def _log_peer_changes(self, snap: Snapshot, now: float) -> None:
        """One line per peer state change, nothing on a healthy tick. Peers are judged at `now`:
        each new snapshot at its reading, and every front door at the moment it shows them, so
        the log has every state a reader saw. (A judgement older than the last one, a read that
        finished after a front door judged, is not logged: time does not run back.)"""
        if now < self._judged_at:
            return
        self._judged_at = now
        seen = {}
        for p in snap.peers:
            state = p.state(now, self.config.stale_after)
            seen[p.public_key] = state
            before = self._peer_states.get(p.public_key)
            if before == state:
                continue
            if state == "up":
                log.info("peer %s (%s) up: handshake %ss ago%s", p.name, p.overlay_ip, p.age(now),
                         " (handshake restored)" if before == "stale" else "")
            elif state == "stale":
                log.warning("peer %s (%s) stale: last handshake %ss ago", p.name, p.overlay_ip, p.age(now))
            elif before is not None:
                log.info("peer %s (%s) has no handshake", p.name, p.overlay_ip)
        self._peer_states = seen

    def status_line(self) -> str:
        s = self.snapshot
        up = sum(1 for p in s.peers if p.state(s.taken, self.config.stale_after) == "up")
        state = s.state(self.config.stale_after, s.taken)
        return (f"{state}: {self.config.role} {self.config.wireguard.interface} {self.config.address}, "
                f"{up}/{len(s.peers)} peers up")

    # --- lifecycle ---------------------------------------------------------------------------

    async def down(self) -> Outcome:
        """Remove the interface and the firewall table, then stop."""
        async with self.lock:
            try:
                await asyncio.to_thread(self.reconciler.down)
            except DvpnError as e:
                return Outcome(False, (str(e),))
        log.info("interface %s and firewall table removed; stopping", self.config.wireguard.interface)
        self.stopping.set()
        return Outcome(True)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        # the composition root: the front doors get a read-only view and the commands, no more
        http = await httpapi.start(self, self.config.status, self.config.metrics)
        c = self.config
        if c.confidential and c.is_hub:
            http.adopt(await httpapi.start_roster(self, str(c.hub_transit_address), c.overlay.port))
        ctl = await control.start(self, self, self.config.control_socket)
        if c.dns.enabled:
            from dvpnd.dns.service import DnsService  # (dnslib: imported only where names are served)

            self.dns = DnsService(c, lambda: self.rosters.roster if self.rosters else None)
            await self.dns.start()
        tasks = [asyncio.create_task(self.reconcile_loop(), name="reconcile"),
                 asyncio.create_task(self.snapshot_loop(), name="snapshot")]
        if c.confidential and not c.is_hub and self.rosters is not None:
            # every hub is asked (any may have the newest roster; the keeper takes the highest
            # serial), and a hub found behind is handed the roster in force
            for h in c.hubs:
                url = f"http://{c.transit_address_via(h, c.hub_address)}:{c.overlay.port}/roster"
                tasks.append(asyncio.create_task(
                    fetch_loop(self.rosters, url, c.overlay.roster_poll, self.stopping, self.roster_adopted,
                               member=lambda: self.reconciler.membership.member is not None,
                               share=bool(c.more_hubs), alive=self._hub_alive(h.public_key)),
                    name=f"roster {h.name}"))
        if self.hub_judge is not None:
            self.prober = prober = Prober(self.hub_judge, self._probe_targets, self._hub_changed)
            tasks.append(asyncio.create_task(prober.run(self.stopping), name="hub probes"))
        if self.dns is not None:
            tasks.append(asyncio.create_task(self.dns.tend(self.stopping), name="dns"))
        if self.db is not None:
            tasks.append(asyncio.create_task(self.db.poll_loop(self.stopping), name="postgres"))
            if self.backrest is not None:
                backrest = self.backrest.loop(self.stopping, self._is_primary)
                tasks.append(asyncio.create_task(backrest, name="pgbackrest"))
        try:
            await self.stopping.wait()
        finally:
            self.notifier.stopping()
            self._wake_roster_waiters()  # the spokes' held requests are answered, not cut
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ctl.close()
            await http.close()
            if self.dns is not None:
                await self.dns.close()
        log.info("dvpnd stopped")
        return self.exit_code


def relay_views(c: Config, relay: dict[str, Any] | None, judge: TransportJudge) -> dict[str, Any]:
    """Snapshot fields from the relay's status file (None: the relay is not running) and the
    choices of transport: auto."""
    if c.is_hub:
        if not c.relay.enabled:
            return {}
        h = (relay or {}).get("hub") or {}
        return {"relay": RelayView(running=relay is not None and bool(h), connections=int(h.get("connections", 0)),
                                   spokes=int(h.get("spokes", 0)), accepted=int(h.get("accepted", 0)),
                                   refused={str(k): int(v) for k, v in dict(h.get("refused", {})).items()},
                                   dropped=int(h.get("dropped", 0)))}
    links = {x.get("name"): x for x in (relay or {}).get("links", []) if isinstance(x, dict)}
    views = []
    for hub in c.hubs:
        x = links.get(hub.name)
        now_on = judge.current.get(hub.public_key, "udp") if hub.transport == "auto" else hub.transport
        common: dict[str, Any] = {"mode": hub.transport, "switches": judge.switches.get(hub.public_key, 0),
                  "on_since": judge.since.get(hub.public_key)}
        if hub.transport == "udp" or x is None:
            views.append(TransportView(hub.name, now_on, **common))
            continue
        views.append(TransportView(hub.name, now_on, connected=bool(x.get("connected")), since=x.get("connected_since"),
                                   connects=int(x.get("connects", 0)), last_error=x.get("last_error"),
                                   udp_ok=x.get("udp_ok"), **common))
    return {"transports": tuple(views)}


def _route_of(hub: HubSpec) -> HubSpec:
    """A hub without its transport keys: a change of transport (udp, tcp) is a reload."""
    return replace(hub, transport="udp", relay_url=None, relay_fingerprint=None, relay_ca=None)


def _raise_nofile() -> None:
    """Many status-page clients need file descriptors; take what the hard limit allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 65536), hard))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dvpnd", description="dvpn WireGuard hub/spoke daemon (foreground)")
    ap.add_argument("--config", type=Path, default=Path(os.environ.get("DVPN_CONFIG", DEFAULT_CONFIG)))
    ap.add_argument("--check", action="store_true", help="validate the config and exit")
    args = ap.parse_args(argv)
    setup_logging("info")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        for p in e.problems:
            log.error("%s", p)
        return EXIT_CONFIG
    if args.check:
        print(f"{args.config}: ok")
        return 0
    setup_logging(config.log_level)
    _raise_nofile()
    daemon = Daemon(args.config, config)
    try:
        daemon.reconciler.load_key()
        if config.confidential and not config.is_hub:
            daemon.reconciler.load_overlay_key()
        if daemon.rosters is not None:
            daemon.reconciler.roster = daemon.rosters.load()
    except DvpnError as e:
        log.error("%s", e)
        return EXIT_CONFIG
    assert daemon.reconciler.private_key is not None
    REDACTOR.add_private_key(daemon.reconciler.private_key)
    log.info("dvpnd starting: %s %s, overlay %s (%s), address %s, public key %s%s", config.role, config.name,
             config.network, config.overlay.mode, config.address, daemon.reconciler.public_key,
             f", overlay key {daemon.reconciler.overlay_public_key}" if daemon.reconciler.overlay_public_key else "")
    # Everything made so far (the modules, the config, the keys: some 45,000 objects) lives as
    # long as the process: out of the cyclic collector's reach, a full collection no longer walks
    # it (about 10 ms here, during which the loop answers nothing: DNS, the status page). What is
    # garbage already is collected first, or it would be kept for good.
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(daemon.run())
    except DvpnError as e:
        log.error("%s", e)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
