"""The read-only HTTP status page: GET /status, /healthz, /readyz.

Handlers serve the daemon's latest snapshot; they never touch netlink, the UAPI socket or
a subprocess. Anything but GET/HEAD gets 405, unknown paths 404.
"""

from __future__ import annotations

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
except AttributeError:  # pragma: no cover - old aiohttp
    DAEMON_KEY = "dvpn_daemon"

MAX_REQUEST_BYTES = 4096


class Server:
    def __init__(self, runner: web.AppRunner | None):
        self.runner = runner

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _daemon(request: web.Request) -> "Daemon":
    return request.app[DAEMON_KEY]  # type: ignore[no-any-return]


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


def make_app(daemon: "Daemon") -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[DAEMON_KEY] = daemon
    for path, handler in (("/status", status), ("/healthz", healthz), ("/readyz", readyz)):
        # add_get also answers HEAD; other methods get 405 from the router.
        app.router.add_get(path, handler)
    return app


async def start(daemon: "Daemon") -> Server:
    cfg = daemon.config.status
    if not cfg.enabled:
        return Server(None)
    runner = web.AppRunner(make_app(daemon), access_log=None, handle_signals=False,
                           keepalive_timeout=15)
    await runner.setup()
    site = web.TCPSite(runner, cfg.address, cfg.port, reuse_address=True, backlog=512)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        log.error("status page cannot listen on %s:%d: %s", cfg.address, cfg.port, e.strerror)
        return Server(None)
    log.info("status page on http://%s:%d/status", cfg.address, cfg.port)
    return Server(runner)
