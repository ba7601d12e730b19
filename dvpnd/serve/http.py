"""The read-only HTTP status page: GET /status, /healthz, /readyz.

Handlers serve the daemon's latest snapshot; they never touch netlink, the UAPI socket or
a subprocess. Anything but GET/HEAD gets 405, unknown paths 404.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from aiohttp import web

from dvpnd.config.model import ListenConfig
from dvpnd.daemon.status import render_status
from dvpnd.serve.api import Published, View
from dvpnd.serve.guard import ConnectionTable, Limits, protocol_factory

log = logging.getLogger("dvpnd.http")

try:  # typed keys on aiohttp >= 3.9; Debian 12 has 3.8
    VIEW_KEY: Any = web.AppKey("view", object)
    REGISTRY_KEY: Any = web.AppKey("registry", object)
except AttributeError:  # pragma: no cover - old aiohttp
    VIEW_KEY = "dvpn_view"
    REGISTRY_KEY = "dvpn_registry"

MAX_REQUEST_BYTES = 4096
IP_FREEBIND = 15  # linux/in.h; the socket module names it only from Python 3.12
# What the page says it is: no version for a scanner to match.
SERVER_NAME = "dvpnd"


class Server:
    def __init__(self, runners: list[web.AppRunner], listeners: list[asyncio.AbstractServer]):
        self.runners = runners
        self.listeners = listeners

    def adopt(self, other: Server) -> None:
        self.runners += other.runners
        self.listeners += other.listeners

    async def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        for runner in self.runners:
            await runner.cleanup()


def guard_middleware(table: ConnectionTable) -> Any:
    """Tells the connection's guard when a request is answered, so it feeds the next one."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as e:  # 404, 405: answers too (a Response in aiohttp 3.x)
            if table.last_request(request.protocol):
                e.force_close()
            raise
        finally:
            table.done(request.protocol)
        if table.last_request(request.protocol):
            response.force_close()  # Connection: close, after this answer is written
        return response

    return middleware


def _anonymous() -> None:
    """Every answer, aiohttp's own 400s included, says SERVER_NAME. aiohttp fills the header
    from this module-level default (3.8 to 3.14) when a response has none."""
    import aiohttp.web_response

    aiohttp.web_response.SERVER_SOFTWARE = SERVER_NAME
    # a garbled request from the Internet is the client's problem, not a traceback in the journal
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


async def _published(request: web.Request) -> Published:
    view: View = request.app[VIEW_KEY]
    await view.fresh()
    return view.published()


async def status(request: web.Request) -> web.Response:
    pub = await _published(request)
    body = render_status(pub.snapshot, pub.now, pub.stale_after)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"alive": True})


async def readyz(request: web.Request) -> web.Response:
    pub = await _published(request)
    ok = pub.ready and pub.snapshot.interface_up
    return web.json_response({"ready": ok}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    await request.app[VIEW_KEY].fresh()
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _application(table: ConnectionTable) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[guard_middleware(table)])
    return app


def make_metrics_app(view: View, table: ConnectionTable) -> web.Application:
    from dvpnd.serve.metrics import make_registry

    app = _application(table)
    app[VIEW_KEY] = view
    app[REGISTRY_KEY] = make_registry(view)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def make_app(view: View, table: ConnectionTable) -> web.Application:
    app = _application(table)
    app[VIEW_KEY] = view
    for path, handler in (("/status", status), ("/healthz", healthz), ("/readyz", readyz)):
        # add_get also answers HEAD; other methods get 405 from the router.
        app.router.add_get(path, handler)
    return app


# How long the hub holds a spoke's request for an unchanged roster (`?wait=`, at most this):
# a change reaches every spoke at once, and an idle spoke costs the hub a few packets per hold
# instead of a request a second.
ROSTER_HOLD_MAX = 300.0


async def roster(request: web.Request) -> web.Response:
    """The roster in force. With `If-None-Match` naming it and `?wait=S`, the answer waits up to
    S seconds for a newer one (a long poll): 200 with it, or 304 when nothing changed."""
    view: View = request.app[VIEW_KEY]
    try:
        wait = min(max(float(request.query.get("wait", "0")), 0.0), ROSTER_HOLD_MAX)
    except ValueError:
        return web.Response(status=400, text="wait: a number of seconds\n")
    if wait != wait:  # NaN
        return web.Response(status=400, text="wait: a number of seconds\n")
    changed = view.roster_changed()  # before reading: a change from here on sets it
    got = view.roster_document()
    if wait and (got is None or request.headers.get("If-None-Match") == got[1]):
        try:
            await asyncio.wait_for(changed.wait(), timeout=wait)
        except TimeoutError:
            pass
        got = view.roster_document()
    if got is None:
        return web.Response(status=404, text="no roster yet\n")
    document, etag = got
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=document, content_type="application/json", headers={"ETag": etag})


OFFER_EVERY = 1.0  # seconds between two offers from one source
_last_offer: dict[str, float] = {}


async def roster_offer(request: web.Request) -> web.Response:
    """A spoke hands this hub the roster in force (this hub was down when it changed). Anything
    from the transit is only offered to the keeper, which verifies it against the authority key:
    nobody can make the hub adopt what the authority did not sign. One offer a second per source,
    so a member cannot fill the log."""
    from dvpnd.roster.model import MAX_DOCUMENT_BYTES, read_capped

    view: View = request.app[VIEW_KEY]
    source = request.remote or "?"
    now = asyncio.get_running_loop().time()
    if now - _last_offer.get(source, -1e9) < OFFER_EVERY:
        return web.Response(status=429, text="one roster offer a second\n")
    if len(_last_offer) > 4096:
        _last_offer.clear()
    _last_offer[source] = now
    body = await read_capped(request.content)
    if len(body) > MAX_DOCUMENT_BYTES:
        return web.Response(status=413, text="larger than a roster may be\n")
    outcome = await view.roster_offer(body, f"a roster offered by {source}")
    if not outcome.ok:
        return web.Response(status=400, text=f"refused: {outcome.data.get('reason', 'bad input')}\n")
    return web.Response(text=f"serial {outcome.data['serial']} in force\n")


def make_roster_app(view: View, table: ConnectionTable) -> web.Application:
    app = _application(table)
    app[VIEW_KEY] = view
    app.router.add_get("/roster", roster)
    app.router.add_post("/roster", roster_offer)
    return app


def _freebind_socket(address: str, port: int) -> socket.socket:
    """A listening socket on an address that may not exist yet (the hub's transit address appears
    with its interface, after the first reconcile)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.listen(512)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start_roster(view: View, address: str, port: int) -> Server:
    """The hub's roster service, on its transit address only (the firewall admits transit
    sources only, too); spokes poll it, so the caps are per spoke."""
    table = ConnectionTable(Limits(max_connections=4096, max_per_source=4, response_timeout=ROSTER_HOLD_MAX + 10))
    served = await _serve(make_roster_app(view, table), table, "roster service", address, port, freebind=True)
    return Server([served[0]] if served else [], [served[1]] if served else [])


async def _serve(app: web.Application, table: ConnectionTable, what: str, address: str,
                 port: int, freebind: bool = False) -> tuple[web.AppRunner, asyncio.AbstractServer] | None:
    _anonymous()
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=15,
                           max_line_size=2048, max_field_size=2048, max_headers=32)
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    try:
        if freebind:
            listener = await loop.create_server(protocol_factory(runner.server, table),
                                                sock=_freebind_socket(address, port))
        else:
            listener = await loop.create_server(protocol_factory(runner.server, table), address, port,
                                                reuse_address=True, backlog=512)
    except OSError as e:
        await runner.cleanup()
        log.error("%s cannot listen on %s:%d: %s", what, address, port, e.strerror)
        return None
    log.info("%s on http://%s:%d", what, address, port)
    return runner, listener


async def start(view: View, st: ListenConfig, mt: ListenConfig) -> Server:
    """Start the status page and the metrics endpoint, each on its configured address."""
    runners, listeners = [], []
    for make, what, lc in ((make_app, "status page", st), (make_metrics_app, "metrics", mt)):
        if not lc.enabled:
            continue
        # one table a listener: a crowd on the public page takes nothing from the scraper
        table = ConnectionTable(Limits(max_connections=lc.max_connections, max_per_source=lc.max_per_source))
        if served := await _serve(make(view, table), table, what, lc.address, lc.port):
            runners.append(served[0])
            listeners.append(served[1])
    return Server(runners, listeners)
