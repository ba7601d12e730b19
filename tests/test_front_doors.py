"""The front doors against a fake read-only view: the status page, readiness and metrics all
show the one Published value, and the daemon builds that value in one place (the database's
current view merged in), so /status, /metrics and `dvpnctl status` agree."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

from dvpnd.config.load import load_config
from dvpnd.daemon.core import Daemon
from dvpnd.daemon.status import PeerView, Snapshot, render_status
from dvpnd.serve import http
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
            counters=Counters(reconcile_count=7, device_writes=3), ready=ready, stale_after=180)

    def published(self) -> Published:
        return self.pub


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
