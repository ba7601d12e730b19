"""The status page: the JSON it renders (pure)."""

from __future__ import annotations

import re

from dvpnd.daemon.status import PeerView, Snapshot, render_status


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
        "role": "spoke", "state": "ok", "peers_up": 1, "version": st["version"], "mode": "routed",
    }
    assert "K" * 43 not in str(st) and "192.0.2.10" not in str(st)
    assert re.fullmatch(r"\d+\.\d+\.\d+", st["version"])


def test_stale_and_never_make_the_node_degraded() -> None:
    st = render_status(snap((peer(700.0),)), now=1000.0, stale_after=180)
    assert st["state"] == "degraded" and st["wg"]["max_last_handshake_sec"] == 300 and st["peers_up"] == 0
    st = render_status(snap((peer(None),)), now=1000.0, stale_after=180)
    assert st["state"] == "degraded" and st["wg"]["max_last_handshake_sec"] == -1


def test_metrics_show_the_roster_and_its_refusals() -> None:
    from dvpnd.daemon.status import RosterView
    from dvpnd.serve.api import Counters
    from dvpnd.serve.metrics import collect_snapshot

    snap = Snapshot(taken=1000.0, node="spoke-a", role="spoke", interface="wg0", overlay_ip="10.88.0.11",
                    backend="userspace", interface_up=True, mode="confidential",
                    roster=RosterView(serial=7, issued=900, expires=2000, members=3, membership_problem=None,
                                      refused={"signature": 2, "older": 1}))
    fams = {f.name: f for f in collect_snapshot(snap, Counters(), 180, 1000.0)}
    assert fams["dvpnd_roster_serial"].samples[0].value == 7
    assert fams["dvpnd_roster_age_seconds"].samples[0].value == 100
    assert fams["dvpnd_roster_expired"].samples[0].value == 0
    refused = {s.labels["reason"]: s.value for s in fams["dvpnd_roster_refused"].samples if s.name.endswith("_total")}
    assert refused == {"signature": 2, "older": 1, "expired": 0, "malformed": 0, "network": 0}
    page = render_status(snap, 1000.0, 180)
    assert page["mode"] == "confidential" and page["roster_serial"] == 7
