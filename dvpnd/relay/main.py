"""`dvpn-relay`: the TCP fallback's data plane, a process of its own (its own unit and memory
limit; a kill -9 or restart of dvpnd cuts no TCP spoke).

It reads the JSON file dvpnd writes (`--config`, by default /run/dvpn/relay.json), and reads it
again when it changes (checked every second) or on SIGHUP; a file it cannot use is logged and the
running configuration stays. Until the file exists it waits. It writes what it is doing to the
file's `status_file` every second, for dvpnd's status, metrics and choice of transport."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from dvpnd.relay.config import Link, RelayConfig, RelayConfigError, parse
from dvpnd.relay.hubside import HubRelay
from dvpnd.relay.spokeside import SpokeLink
from dvpnd.util.fsutil import write_atomic
from dvpnd.util.log import setup_logging

log = logging.getLogger("dvpnd.relay")
DEFAULT_CONFIG = Path("/run/dvpn/relay.json")


def read_config(path: Path) -> RelayConfig | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return parse(json.loads(text), str(path))
    except json.JSONDecodeError as e:
        raise RelayConfigError(f"{path}: not JSON: {e}") from None


def same_connection(a: Link, b: Link) -> bool:
    """Whether two settings of a link describe the same WebSocket (the rest changes in place)."""
    def conn(x: Link) -> Link:
        return replace(x, udp_endpoint=None, udp_hold=0.0, active=True, nudge=None)
    return conn(a) == conn(b)


class Relay:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: RelayConfig | None = None
        self.hub: HubRelay | None = None
        self.links: dict[str, SpokeLink] = {}
        self.stamp: tuple[int, int] | None = None
        self.started = time.time()
        self.gone = False

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    async def load(self) -> None:
        self.stamp = self._stamp()
        try:
            new = read_config(self.path)
        except (RelayConfigError, OSError) as e:
            log.error("%s; keeping the running configuration", e)
            return
        if new is None and self.config is not None:
            log.info("relay: %s is gone (dvpnd needs no relay here now); stopping", self.path)
            self.gone = True
            return
        if new is None or new == self.config:
            return
        await self.apply(new)

    async def apply(self, new: RelayConfig) -> None:
        old = self.config
        if self.hub is not None and (new.hub is None or old is None or old.hub is None
                                     or (old.hub.address, old.hub.port, old.hub.cert, old.hub.key)
                                     != (new.hub.address, new.hub.port, new.hub.cert, new.hub.key)):
            await self.hub.close()
            self.hub = None
        if new.hub is not None:
            if self.hub is None:
                hub = HubRelay(new.hub)
                try:
                    await hub.start()
                except (OSError, ValueError) as e:
                    log.error("relay: cannot listen on %s:%d: %s", new.hub.address, new.hub.port, e)
                    await hub.close()
                else:
                    self.hub = hub
            else:
                self.hub.reconfigure(new.hub)
        wanted = {x.name: x for x in new.links}
        for name in list(self.links):
            link = self.links[name]
            if name in wanted and same_connection(wanted[name], link.cfg):
                link.cfg = wanted[name]  # (where the probes go, the hold-down, active: no reconnect)
            else:
                await self.links.pop(name).close()
        for name, cfg in wanted.items():
            if name not in self.links:
                link = SpokeLink(cfg)
                try:
                    await link.start()
                except OSError as e:
                    log.error("relay %s: cannot open 127.0.0.1:%d: %s", name, cfg.local_port, e)
                    await link.close()
                    continue
                self.links[name] = link
                log.info("relay %s: WireGuard's endpoint for it is 127.0.0.1:%d", name, cfg.local_port)
        self.config = new

    def view(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "time": time.time(), "started": self.started,
                "hub": self.hub.view() if self.hub else None,
                "links": [x.view() for x in self.links.values()]}

    def write_status(self) -> None:
        if self.config is None or not self.config.status_file:
            return
        try:
            write_atomic(Path(self.config.status_file), json.dumps(self.view()).encode(), 0o600)
        except OSError as e:
            log.warning("relay: cannot write %s: %s", self.config.status_file, e)

    async def run(self, stopping: asyncio.Event, reload: asyncio.Event) -> None:
        await self.load()
        last_status = 0.0
        try:
            while not stopping.is_set() and not self.gone:
                try:
                    await asyncio.wait_for(reload.wait(), timeout=1.0)
                except TimeoutError:
                    pass
                if reload.is_set() or self._stamp() != self.stamp:
                    reload.clear()
                    await self.load()
                    self.write_status()  # (dvpnd waits for a move's change to show here)
                    last_status = time.monotonic()
                if time.monotonic() - last_status >= 1.0:
                    last_status = time.monotonic()
                    self.write_status()
        finally:
            if self.hub is not None:
                await self.hub.close()
            for link in self.links.values():
                await link.close()


async def amain(path: Path) -> int:
    stopping, reload = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    relay = Relay(path)
    log.info("dvpn-relay starting (config %s)", path)
    await relay.run(stopping, reload)
    log.info("dvpn-relay stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dvpn-relay", description="dvpn's TCP fallback relay (WireGuard over WebSocket)")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    args = ap.parse_args(argv)
    setup_logging("info")
    return run_fast(amain(args.config))


def run_fast(main: Coroutine[Any, Any, int]) -> int:
    """Runs on uvloop where it is installed (Debian's python3-uvloop, a Recommends): every datagram
    crosses the event loop twice, and libuv reads a burst of datagrams per wake-up where asyncio's
    own loop reads one."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    if hasattr(uvloop, "run"):  # (uvloop 0.18 and later)
        return int(uvloop.run(main))
    uvloop.install()  # (Debian 12's 0.17)
    return asyncio.run(main)


if __name__ == "__main__":
    sys.exit(main())
