"""The read-only HTTP status page: GET /status, /healthz, /readyz.

Handlers serve the daemon's latest snapshot; they never touch netlink, the UAPI socket or
a subprocess. Anything but GET/HEAD gets 405, unknown paths 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dvpnd.snapshot import render_status

if TYPE_CHECKING:
    from dvpnd.daemon import Daemon

log = logging.getLogger("dvpnd.http")

try:  # typed keys on aiohttp >= 3.9; Debian 12 has 3.8
    DAEMON_KEY: Any = web.AppKey("daemon", object)
    REGISTRY_KEY: Any = web.AppKey("registry", object)
except AttributeError:  # pragma: no cover - old aiohttp
    DAEMON_KEY = "dvpn_daemon"
    REGISTRY_KEY = "dvpn_registry"

MAX_REQUEST_BYTES = 4096
# A connection must send its request within this time; aiohttp >= 3.9 has the same rule
# (its keepalive timeout also covers a fresh connection) but Debian 12's 3.8 has none.
HEADER_TIMEOUT = 10.0
MAX_CONNECTIONS = 2048


class Server:
    def __init__(self, runners: list[web.AppRunner], reaper: asyncio.Task[None] | None = None):
        self.runners = runners
        self.reaper = reaper

    async def close(self) -> None:
        if self.reaper is not None:
            self.reaper.cancel()
        for runner in self.runners:
            await runner.cleanup()


class ConnectionGuard:
    """Closes connections that send no request in time, and the oldest silent ones past a cap,
    so idle or slow clients cannot hold the status page's file descriptors or memory."""

    def __init__(self) -> None:
        # aiohttp's handlers take no weak references (__slots__); both are pruned on every sweep.
        self.served: set[Any] = set()
        self.first_seen: dict[Any, float] = {}
        self.closed = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.served.add(request.protocol)
        return await handler(request)

    def sweep(self, connections: list[Any], now: float) -> int:
        live = set(connections)
        self.served &= live
        self.first_seen = {c: t for c, t in self.first_seen.items() if c in live}
        silent = []
        for conn in connections:
            seen = self.first_seen.setdefault(conn, now)
            if conn not in self.served:
                silent.append((seen, conn))
        silent.sort(key=lambda sc: sc[0])
        excess = max(0, len(connections) - MAX_CONNECTIONS)
        closed = 0
        for i, (seen, conn) in enumerate(silent):
            if i < excess or now - seen > HEADER_TIMEOUT:
                conn.force_close()
                closed += 1
        self.closed += closed
        return closed

    async def run(self, runners: list[web.AppRunner]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1)
            # One sweep over every listener: a sweep prunes what it does not see.
            conns = [c for r in runners if r.server is not None for c in r.server.connections]
            try:
                self.sweep(conns, loop.time())
            except Exception as e:  # noqa: BLE001 - the guard must outlive a surprise
                log.warning("connection guard: %s", e)


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON_KEY]


async def status(request: web.Request) -> web.Response:
    d = _daemon(request)
    body = render_status(d.snapshot, time.time(), d.config.stale_after)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"alive": True})


async def readyz(request: web.Request) -> web.Response:
    d = _daemon(request)
    ok = d.ready and d.snapshot.interface_up
    return web.json_response({"ready": ok}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_metrics_app(daemon: Daemon, guard: ConnectionGuard) -> web.Application:
    from dvpnd.metrics import make_registry

    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[guard.middleware])
    app[DAEMON_KEY] = daemon
    app[REGISTRY_KEY] = make_registry(daemon)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def make_app(daemon: Daemon, guard: ConnectionGuard) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[guard.middleware])
    app[DAEMON_KEY] = daemon
    for path, handler in (("/status", status), ("/healthz", healthz), ("/readyz", readyz)):
        # add_get also answers HEAD; other methods get 405 from the router.
        app.router.add_get(path, handler)
    return app


async def _serve(app: web.Application, what: str, address: str, port: int) -> web.AppRunner | None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=15)
    await runner.setup()
    site = web.TCPSite(runner, address, port, reuse_address=True, backlog=512)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        log.error("%s cannot listen on %s:%d: %s", what, address, port, e.strerror)
        return None
    log.info("%s on http://%s:%d", what, address, port)
    return runner


async def start(daemon: Daemon) -> Server:
    """Start the status page and the metrics endpoint, each on its configured address."""
    runners = []
    guard = ConnectionGuard()
    st, mt = daemon.config.status, daemon.config.metrics
    if st.enabled and (r := await _serve(make_app(daemon, guard), "status page", st.address, st.port)):
        runners.append(r)
    if mt.enabled and (r := await _serve(make_metrics_app(daemon, guard), "metrics", mt.address, mt.port)):
        runners.append(r)
    return Server(runners, asyncio.create_task(guard.run(runners), name="http-guard"))
