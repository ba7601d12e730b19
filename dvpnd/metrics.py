"""Prometheus metrics, built from the daemon's snapshot at scrape time (no I/O).

Per-peer series use prometheus_wireguard_exporter's names and labels (interface,
public_key, allowed_ips, friendly_name) so existing dashboards work; dvpnd's own series
are prefixed dvpnd_.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from dvpnd.snapshot import VERSION, Snapshot

if TYPE_CHECKING:
    from dvpnd.daemon import Daemon


def collect_snapshot(snap: Snapshot, counters: dict[str, float], stale_after: int, now: float) -> Iterator[Any]:
    """The metric families for one snapshot (pure)."""
    labels = ["interface", "public_key", "allowed_ips", "friendly_name"]
    sent = CounterMetricFamily("wireguard_sent_bytes", "Bytes sent to the peer", labels=labels)
    recv = CounterMetricFamily("wireguard_received_bytes", "Bytes received from the peer", labels=labels)
    hs = GaugeMetricFamily("wireguard_latest_handshake_seconds",
                           "UNIX timestamp of the latest handshake with the peer (0: never)", labels=labels)
    states = {"up": 0, "stale": 0, "never": 0}
    for p in snap.peers:
        lv = [snap.interface, p.public_key, ",".join(p.allowed_ips), p.name]
        sent.add_metric(lv, p.tx_bytes)
        recv.add_metric(lv, p.rx_bytes)
        hs.add_metric(lv, int(p.last_handshake or 0))
        states[p.state(now, stale_after)] += 1
    yield from (sent, recv, hs)

    peers = GaugeMetricFamily("dvpnd_peers", "Peers by state (up, stale, never)", labels=["state"])
    for state, n in states.items():
        peers.add_metric([state], n)
    yield peers
    yield GaugeMetricFamily("dvpnd_peers_stale", "Peers whose last handshake is older than stale_after",
                            value=states["stale"])
    yield CounterMetricFamily("dvpnd_reconcile", "Reconcile passes that succeeded",
                              value=counters.get("reconcile_count", 0))
    yield CounterMetricFamily("dvpnd_reconcile_errors", "Reconcile passes that failed",
                              value=counters.get("reconcile_errors", 0))
    yield GaugeMetricFamily("dvpnd_reconcile_duration_seconds", "Duration of the last successful reconcile",
                            value=counters.get("reconcile_duration", 0.0))
    yield CounterMetricFamily("dvpnd_device_writes", "Writes to the WireGuard device",
                              value=counters.get("device_writes", 0))
    yield GaugeMetricFamily("dvpnd_firewall_applied", "1 if the dvpn nftables table is in force",
                            value=1 if snap.firewall_applied and not snap.firewall_error else 0)
    yield CounterMetricFamily("dvpnd_firewall_applies", "Times the nftables table was applied",
                              value=counters.get("firewall_applies", 0))
    yield GaugeMetricFamily("dvpnd_firewall_rules", "Rules in the dvpn table", value=counters.get("firewall_rules", 0))
    yield GaugeMetricFamily("dvpnd_interface_up", "1 if the WireGuard interface is up", value=int(snap.interface_up))
    yield GaugeMetricFamily("dvpnd_ready", "1 once the first reconcile is done", value=int(snap.ready))
    yield GaugeMetricFamily("dvpnd_snapshot_age_seconds", "Age of the data behind this scrape",
                            value=max(0.0, now - snap.taken))
    info = InfoMetricFamily("dvpnd_build", "dvpnd build and node information")
    info.add_metric([], {"version": VERSION, "role": snap.role, "backend": snap.backend, "node": snap.node})
    yield info


class SnapshotCollector(Collector):
    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def collect(self) -> Iterator[Any]:
        d = self.daemon
        return collect_snapshot(d.snapshot, d.counters(), d.config.stale_after, time.time())


def make_registry(daemon: Daemon) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(daemon))
    return registry
