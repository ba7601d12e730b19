"""The front doors against a fake read-only view: the status page, readiness and metrics all
show the one Published value, and the daemon builds that value in one place (the database's
current view merged in), so /status, /metrics and `dvpnctl status` agree."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dvpnd.config.load import load_config
from dvpnd.daemon.core import Daemon
from dvpnd.daemon.status import PeerView, Snapshot, render_status
from dvpnd.serve import control, http
from dvpnd.serve.api import Counters, Published
from dvpnd.serve.guard import ConnectionTable, Limits

from .test_config import SPOKE, write


class FakeView:
    def __init__(self, ready: bool) -> None:
        peer = PeerView(name="hub", public_key="K" * 43 + "=", overlay_ip="10.88.0.1", allowed_ips=("10.88.0.0/24",),
                        endpoint="192.0.2.10:51820", last_handshake=990.0, rx_bytes=1, tx_bytes=2)
        self.pub = Published(
            snapshot=Snapshot(taken=1000.0, node="spoke-a", role="spoke", interface="wg0", overlay_ip="10.88.0.11",
                              backend="userspace", interface_up=True, peers=(peer,), ready=ready),
            counters=Counters(reconcile_count=7, device_writes=3), ready=ready, stale_after=180, now=time.time())

    def published(self) -> Published:
        return self.pub

    async def fresh(self) -> None:
        self.freshened = getattr(self, "freshened", 0) + 1


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def serve(view: Any, make: Any, paths: list[str]) -> list[tuple[int, bytes]]:
    async def go() -> list[tuple[int, bytes]]:
        table = ConnectionTable(Limits())
        served = await http._serve(make(view, table), table, "test", "127.0.0.1", 0)
        assert served is not None
        runner, listener = served
        port = listener.sockets[0].getsockname()[1]
        try:
            return [await asyncio.to_thread(get, port, p) for p in paths]
        finally:
            listener.close()
            await runner.cleanup()
    return asyncio.run(go())


def test_the_page_shows_the_published_snapshot_and_readiness() -> None:
    view = FakeView(ready=True)
    (st, body), (rd, _) = serve(view, http.make_app, ["/status", "/readyz"])
    doc = json.loads(body)
    assert st == 200 and rd == 200
    assert (doc["node"], doc["overlay_ip"], doc["role"], doc["wg"]["peer_count"]) == ("spoke-a", "10.88.0.11", "spoke", 1)
    assert set(doc) == set(render_status(view.pub.snapshot, 1000.0, 180)) and b"KKKK" not in body
    (rd, body), = serve(FakeView(ready=False), http.make_app, ["/readyz"])
    assert rd == 503 and json.loads(body) == {"ready": False}


def test_metrics_show_the_published_counters() -> None:
    (code, body), = serve(FakeView(ready=True), http.make_metrics_app, ["/metrics"])
    text = body.decode()
    assert code == 200 and "dvpnd_reconcile_total 7.0" in text and "dvpnd_device_writes_total 3.0" in text


def test_the_daemon_publishes_the_databases_current_view(tmp_path: Path) -> None:
    f = write(tmp_path, SPOKE + "postgres:\n  primary: 10.88.0.11\nbackup:\n  enabled: false\n")
    d = Daemon(f, load_config(f))
    assert d.db is not None and d.backrest is None
    marker: Any = object()
    d.db.view = marker  # what the next poll saw, newer than the last snapshot
    pub = d.published()
    assert pub.snapshot.postgres is marker and pub.snapshot.extra == pub.counters.as_dict()
    assert pub.stale_after == d.config.stale_after and pub.ready is False


def test_a_snapshot_is_read_at_most_once_a_second_however_many_ask(tmp_path: Path) -> None:
    f = write(tmp_path, SPOKE)
    d = Daemon(f, load_config(f))
    reads: list[float] = []

    def read(device: Any = None) -> Any:
        reads.append(time.time())
        time.sleep(0.05)  # (a device read takes a while: the others arrive meanwhile)
        return replace(d._empty_snapshot(), taken=time.time())

    d._read_snapshot = read  # type: ignore[method-assign]

    async def go() -> None:
        d.snapshot = replace(d.snapshot, taken=time.time() - 5)  # an idle node's old snapshot
        await asyncio.gather(*(d.fresh() for _ in range(20)))
        assert len(reads) == 1  # twenty front doors at once: one read, shared
        await d.fresh()
        assert len(reads) == 1  # a second later than that read, not yet: still one
        d.snapshot = replace(d.snapshot, taken=time.time() - 1.5)
        await d.fresh()
        assert len(reads) == 2

    asyncio.run(go())


def test_a_peer_a_front_door_shows_stale_is_logged_stale(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A front door judges the snapshot's peers when it shows them, up to a second after the
    read: a peer that crossed stale_after in between is shown stale, and logged so."""
    caplog.set_level(logging.INFO, logger="dvpnd")
    f = write(tmp_path, SPOKE)
    d = Daemon(f, load_config(f))
    now = time.time()
    hub = PeerView(name="hub", public_key="K" * 43 + "=", overlay_ip="10.88.0.1", allowed_ips=("10.88.0.0/24",),
                   endpoint="192.0.2.10:51820", last_handshake=now - d.config.stale_after - 1.5, rx_bytes=1, tx_bytes=2)
    read = replace(d._empty_snapshot(), taken=now - 1.0, peers=(hub,))
    d.snapshot = read
    d._log_peer_changes(read, read.taken)  # the read: still up then
    assert [r.getMessage() for r in caplog.records] == [f"peer hub (10.88.0.1) up: handshake {d.config.stale_after}s ago"]
    pub = d.published()
    assert render_status(pub.snapshot, pub.now, pub.stale_after)["peers_up"] == 0
    assert caplog.records[-1].getMessage().startswith("peer hub (10.88.0.1) stale: last handshake 18")
    caplog.clear()
    d._log_peer_changes(read, read.taken)  # a read that finished after the front door judged
    d.published()
    assert not caplog.records  # nothing flaps: one line per change


def test_a_front_door_does_not_wait_for_a_frozen_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvpnd.daemon import core

    monkeypatch.setattr(core, "FRESH_WAIT", 0.1)
    f = write(tmp_path, SPOKE)
    d = Daemon(f, load_config(f))

    def frozen(device: Any = None) -> Any:
        time.sleep(0.6)  # (a frozen wireguard-go: the read waits for its timeout)
        return replace(d._empty_snapshot(), taken=time.time(), node="the late read")

    d._read_snapshot = frozen  # type: ignore[method-assign]

    async def go() -> None:
        d.snapshot = old = replace(d.snapshot, taken=time.time() - 5)
        t0 = time.monotonic()
        await d.fresh()
        assert time.monotonic() - t0 < 0.4 and d.snapshot is old  # the last one shown at once
        await asyncio.sleep(0.8)
        assert d.snapshot.node == "the late read"  # and the read lands for the next request

    asyncio.run(go())


def test_background_snapshots_space_out_as_they_cost_more_within_their_bounds() -> None:
    from dvpnd.daemon import core

    assert core.snapshot_interval(0.0002, False) == core.SNAPSHOT_INTERVAL  # a few peers: every second
    assert core.snapshot_interval(0.005, False) == pytest.approx(0.005 / core.SNAPSHOT_BUDGET)
    assert core.snapshot_interval(0.5, False) == core.SNAPSHOT_MAX_INTERVAL  # never rarer than this
    assert core.snapshot_interval(0.5, True) == core.SNAPSHOT_INTERVAL  # a node that acts on each one
    assert core.SNAPSHOT_MAX_INTERVAL < 30  # systemd's WatchdogSec (systemd/dvpnd.service)


def test_the_front_doors_freshen_the_snapshot_before_showing_it() -> None:
    view = FakeView(ready=True)
    serve(view, http.make_app, ["/status", "/readyz"])
    serve(view, http.make_metrics_app, ["/metrics"])
    reply = asyncio.run(control.handle(view, None, {"cmd": "status"}))  # type: ignore[arg-type]
    assert reply["ok"] and view.freshened == 4
