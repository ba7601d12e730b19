"""The status page's pure parts: the JSON it renders and the guard against idle connections."""

from __future__ import annotations

import re

import pytest

from dvpnd.httpapi import HEADER_TIMEOUT, MAX_CONNECTIONS, ConnectionGuard
from dvpnd.snapshot import PeerView, Snapshot, render_status


class Conn:
    def __init__(self) -> None:
        self.closed = False

    def force_close(self) -> None:
        self.closed = True


def test_silent_connections_are_closed_after_the_header_timeout_served_ones_are_not() -> None:
    g = ConnectionGuard()
    silent, served = Conn(), Conn()
    g.served.add(served)
    assert g.sweep([silent, served], now=100.0) == 0
    assert g.sweep([silent, served], now=100.0 + HEADER_TIMEOUT - 1) == 0
    assert g.sweep([silent, served], now=100.0 + HEADER_TIMEOUT + 1) == 1
    assert silent.closed and not served.closed


def test_past_the_cap_the_oldest_silent_connections_go_first() -> None:
    g = ConnectionGuard()
    old = [Conn() for _ in range(10)]
    g.sweep(old, now=0.0)
    new = [Conn() for _ in range(MAX_CONNECTIONS)]
    g.sweep(old + new, now=1.0)
    assert all(c.closed for c in old) and not any(c.closed for c in new)


def snap(peers: tuple[PeerView, ...]) -> Snapshot:
    return Snapshot(taken=1000.0, node="spoke-a", role="spoke", interface="wg0", overlay_ip="10.88.0.11",
                    backend="userspace", interface_up=True, peers=peers, disk_free_bytes=45_234_000_000,
                    ready=True)


def peer(hs: float | None) -> PeerView:
    return PeerView(name="hub", public_key="K" * 43 + "=", overlay_ip="10.88.0.1", allowed_ips=("10.88.0.0/24",),
                    endpoint="192.0.2.10:51820", last_handshake=hs, rx_bytes=1, tx_bytes=2)


def test_status_json_is_the_seeds_and_carries_no_key_or_endpoint() -> None:
    st = render_status(snap((peer(985.0),)), now=1000.25, stale_after=180)
    assert st == {
        "node": "spoke-a", "overlay_ip": "10.88.0.11",
        "wg": {"interface": "wg0", "peer_count": 1, "max_last_handshake_sec": 15},
        "disk_free_gb": 45.2, "time": "1970-01-01T00:16:40.250Z",
        "role": "spoke", "state": "ok", "peers_up": 1, "version": st["version"],
    }
    assert "K" * 43 not in str(st) and "192.0.2.10" not in str(st)
    assert re.fullmatch(r"\d+\.\d+\.\d+", st["version"])


def test_stale_and_never_make_the_node_degraded() -> None:
    st = render_status(snap((peer(700.0),)), now=1000.0, stale_after=180)
    assert st["state"] == "degraded" and st["wg"]["max_last_handshake_sec"] == 300 and st["peers_up"] == 0
    st = render_status(snap((peer(None),)), now=1000.0, stale_after=180)
    assert st["state"] == "degraded" and st["wg"]["max_last_handshake_sec"] == -1


def test_guard_keeps_no_state_for_connections_that_are_gone() -> None:
    g = ConnectionGuard()
    conns = [Conn() for _ in range(5)]
    g.served.update(conns[:2])
    g.sweep(conns, now=0.0)
    g.sweep(conns[4:], now=1.0)
    assert len(g.first_seen) == 1 and not g.served


def test_connections_of_every_listener_keep_aging_across_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: one guard serves the status and metrics listeners; sweeping them one by one
    pruned each other's connections, so silent status connections never aged (aiohttp 3.8)."""
    import asyncio
    from types import SimpleNamespace

    import dvpnd.httpapi

    monkeypatch.setattr(dvpnd.httpapi, "HEADER_TIMEOUT", 1.0)
    g = ConnectionGuard()
    status_conn, metrics_conn = Conn(), Conn()
    runners = [SimpleNamespace(server=SimpleNamespace(connections=[status_conn])),
               SimpleNamespace(server=SimpleNamespace(connections=[metrics_conn]))]

    async def drive() -> None:
        task = asyncio.create_task(g.run(runners))  # type: ignore[arg-type]
        await asyncio.sleep(3.5)
        task.cancel()

    asyncio.run(drive())
    assert status_conn.closed and metrics_conn.closed
