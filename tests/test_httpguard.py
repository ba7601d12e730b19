"""The status page's front (dvpnd.httpguard) against what an Internet client can send.

Each test runs the real aiohttp server of the installed version (PyPI's in one pass, Debian
12's 3.8 in the other) behind the guard on 127.0.0.1, and talks to it over raw sockets.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from dvpnd.serve import http as httpapi
from dvpnd.serve.guard import ConnectionTable, Limits, has_body

GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"alive": True})


@asynccontextmanager
async def page(limits: Limits, handler: Any = healthz) -> AsyncIterator[tuple[int, ConnectionTable]]:
    """The real page's front and aiohttp, serving `handler` at /healthz on 127.0.0.1."""
    table = ConnectionTable(limits)
    app = httpapi._application(table)
    app.router.add_get("/healthz", handler)
    served = await httpapi._serve(app, table, "test page", "127.0.0.1", 0)
    assert served is not None
    runner, listener = served
    port = listener.sockets[0].getsockname()[1]
    try:
        yield port, table
    finally:
        listener.close()
        await runner.cleanup()


async def client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_all(r: asyncio.StreamReader, seconds: float) -> tuple[bytes, bool]:
    """What the server sent within `seconds`, and whether it closed the connection."""
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(r.read(65536), max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            return out, False
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, True
        out += chunk
    return out, False


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def test_keepalive_requests_are_answered_one_after_another_without_a_version() -> None:
    async def go() -> None:
        async with page(Limits()) as (port, _):
            r, w = await client(port)
            for _ in range(3):
                w.write(GET)
                head = await r.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                assert b"\r\nServer: dvpnd\r\n" in head and b"aiohttp" not in head and b"Python" not in head
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                assert await r.readexactly(length) == b'{"alive": true}'
            w.write(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 404") and b"\r\nServer: dvpnd\r\n" in head
            w.close()
    run(go)


def test_a_malformed_request_gets_400_and_no_version() -> None:
    async def go() -> None:
        async with page(Limits()) as (port, _):
            r, w = await client(port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n")
            out, closed = await read_all(r, 3)
            assert out.startswith(b"HTTP/1.") and b" 400 " in out.split(b"\r\n")[0] and closed
            assert b"\r\nServer: dvpnd\r\n" in out and b"aiohttp" not in out and b"Python/" not in out
    run(go)


def test_pipelined_requests_are_read_one_at_a_time_and_the_connection_ends_after_max_requests() -> None:
    """Regression: aiohttp 3.8 queued every pipelined request; 29 MB of them held 1.3 GB."""
    async def go() -> None:
        async with page(Limits(max_requests=20)) as (port, table):
            r, w = await client(port)
            w.write(GET * 5000)  # 170 KB at once, far more than the guard's 8 KiB buffer
            conn = next(iter(table.open.values()))
            await asyncio.sleep(0.2)
            assert conn.used <= len(conn.buf) == 8192
            out, closed = await read_all(r, 5)
            # what the server wrote may be lost to the reset that unread input causes on close
            assert closed and out.count(b"HTTP/1.1 200") <= 20
    run(go)


def test_a_keepalive_client_is_told_to_close_after_max_requests() -> None:
    async def go() -> None:
        async with page(Limits(max_requests=5)) as (port, table):
            r, w = await client(port)
            heads = []
            for _ in range(5):
                w.write(GET)
                heads.append(await r.readuntil(b"\r\n\r\n"))
                await r.readexactly(int(heads[-1].split(b"Content-Length: ")[1].split(b"\r\n")[0]))
            assert all(h.startswith(b"HTTP/1.1 200") for h in heads)
            assert b"Connection: close" in heads[-1] and not any(b"Connection: close" in h for h in heads[:-1])
            out, closed = await read_all(r, 3)
            assert closed and out == b""
    run(go)


def test_a_client_that_never_reads_its_answers_is_closed() -> None:
    async def go() -> None:
        limits = Limits(max_requests=10**9, response_timeout=1.0, request_timeout=1.0)
        async with page(limits) as (port, table):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            await asyncio.sleep(0.1)
            assert len(table.open) == 1
            sent = 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and table.open:
                try:
                    sent += s.send(GET * 100)
                    await asyncio.sleep(0)
                except BlockingIOError:
                    await asyncio.sleep(0.05)
                except OSError:
                    break
            assert not table.open, "a client that reads nothing must not be kept"
            assert table.closed_slow == 1 and sent > 100_000
            s.close()
    run(go)


@pytest.mark.parametrize("payload", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 5000,  # header block without end, too large
    b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: aaaaaaaaaaaaaaaaaaaa\r\n" * 300 + b"\r\n",  # complete but too large
])
def test_oversized_headers_close_the_connection_unanswered(payload: bytes) -> None:
    async def go() -> None:
        async with page(Limits()) as (port, table):
            r, w = await client(port)
            w.write(payload)
            out, closed = await read_all(r, 3)
            assert closed and out == b"" and table.closed_oversize == 1
    run(go)


@pytest.mark.parametrize("payload, status", [
    (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 100, b" 405 "),
    (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 100_000, b" 405 "),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b" 200 "),
])
def test_a_request_with_a_body_is_answered_and_is_the_connections_last(payload: bytes, status: bytes) -> None:
    async def go() -> None:
        async with page(Limits(response_timeout=2.0)) as (port, table):
            r, w = await client(port)
            w.write(payload + GET * 10)
            out, closed = await read_all(r, 4)
            assert closed and status in out.split(b"\r\n")[0] and out.count(b"HTTP/1.1") == 1
            assert b"Connection: close" in out
    run(go)


def test_a_connection_that_sends_no_whole_request_in_time_is_closed() -> None:
    async def go() -> None:
        async with page(Limits(request_timeout=0.5)) as (port, table):
            r1, w1 = await client(port)
            r2, w2 = await client(port)
            w2.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # slowloris: never finishes
            t0 = time.monotonic()
            (out1, closed1), (out2, closed2) = await asyncio.gather(read_all(r1, 3), read_all(r2, 3))
            assert closed1 and closed2 and out1 == out2 == b""
            assert time.monotonic() - t0 < 2.5 and table.closed_slow == 2
    run(go)


def test_past_the_per_source_cap_the_oldest_idle_connection_makes_room() -> None:
    async def go() -> None:
        async with page(Limits(max_per_source=4, max_connections=10)) as (port, table):
            conns = [await client(port) for _ in range(4)]
            await asyncio.sleep(0.1)
            new_r, new_w = await client(port)
            out, closed = await read_all(conns[0][0], 1)
            assert closed, "the oldest idle connection goes first"
            new_w.write(GET)
            head = await new_r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert table.evicted == 1 and len(table.open) == 4
    run(go)


def test_a_request_unread_in_a_burst_of_accepts_is_not_evicted() -> None:
    """Regression (a flaky lab test): the loop accepts a backlog in one go and runs every
    connection_made before the first read, so the idle connections accepted after a client's
    evicted it, its request still unread in the kernel."""
    async def go() -> None:
        async with page(Limits(max_per_source=4, max_connections=10)) as (port, table):
            # blocking connects: the server's loop runs only at the next await, so all of these
            # sit in the accept backlog together, the client's request already sent
            idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
            mine = socket.create_connection(("127.0.0.1", port))
            mine.sendall(GET)
            idle += [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
            try:
                mine.setblocking(False)
                loop = asyncio.get_running_loop()
                head = await asyncio.wait_for(loop.sock_recv(mine, 4096), 3)
                assert head.startswith(b"HTTP/1.1 200"), head
            finally:
                for s in [mine, *idle]:
                    s.close()
    run(go)


def test_a_burst_of_idle_connections_evicts_one_per_new_one_and_refuses_none() -> None:
    """Regression: an evicted connection stays in the table until the loop runs its
    connection_lost; counted against the cap, a burst of accepts evicted more and more of
    the live ones and then refused new connections (a client's among them)."""
    async def go() -> None:
        async with page(Limits(max_per_source=4, max_connections=10)) as (port, table):
            burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
            try:
                for _ in range(500):  # (a busy machine accepts slowly)
                    await asyncio.sleep(0.02)
                    if table.evicted + table.refused >= 36:
                        break
                assert (table.evicted, table.refused, len(table.open)) == (36, 0, 4)
            finally:
                for s in burst:
                    s.close()
    run(go)


def test_when_every_connection_is_busy_a_new_one_is_refused() -> None:
    async def go() -> None:
        release = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            await release.wait()
            return web.json_response({"alive": True})

        async with page(Limits(max_per_source=2, max_connections=2), slow) as (port, table):
            busy = [await client(port) for _ in range(2)]
            for _, w in busy:
                w.write(GET)
            await asyncio.sleep(0.2)
            r, w = await client(port)
            out, closed = await read_all(r, 1)
            assert closed and out == b"" and table.refused == 1
            release.set()
            for br, _ in busy:
                assert (await br.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    run(go)


def test_caps_are_checked_by_the_config_loader(tmp_path: Any) -> None:
    from dvpnd.config.load import load_config
    from dvpnd.errors import ConfigError
    from tests.test_config import SPOKE

    f = tmp_path / "dvpnd.yaml"
    f.write_text(SPOKE + "status:\n  max_connections: 10\n  max_connections_per_source: 20\n")
    with pytest.raises(ConfigError, match=r"status.max_connections_per_source: 20 is more than max_connections \(10\)"):
        load_config(f)
    f.write_text(SPOKE + "status:\n  max_connections: 1000\n  max_connections_per_source: 1000\n")
    c = load_config(f)
    assert (c.status.max_connections, c.status.max_per_source) == (1000, 1000)
    assert (c.metrics.max_connections, c.metrics.max_per_source) == (256, 64)


@pytest.mark.parametrize("head, body", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\ncontent-length:  0 \r\n\r\n", False),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", True),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    (b"POST / HTTP/1.1\r\nContent-Length: 0\r\nTRANSFER-ENCODING: identity\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nX-Content-Length: 5\r\n\r\n", False),
])
def test_a_body_is_what_the_header_block_announces(head: bytes, body: bool) -> None:
    assert has_body(head) is body


@pytest.mark.parametrize("keys, message", [
    ("  max_connections: 0\n", "status.max_connections: 0 is out of range (1-65536)"),
    ("  max_connections_per_source: 100000\n", "status.max_connections_per_source: 100000 is out of range"),
    ("  max_connections: '10'\n", "status.max_connections: must be an integer, got a string"),
])
def test_connection_caps_out_of_range_are_refused(tmp_path: Any, keys: str, message: str) -> None:
    from dvpnd.config.load import load_config
    from dvpnd.errors import ConfigError
    from tests.test_config import SPOKE

    f = tmp_path / "dvpnd.yaml"
    f.write_text(SPOKE + "status:\n" + keys)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert any(message in p for p in e.value.problems), e.value.problems
