"""Prometheus metrics, built from the daemon's snapshot at scrape time (no I/O).

Per-peer series use prometheus_wireguard_exporter's names and labels (interface,
public_key, allowed_ips, friendly_name) so existing dashboards work; dvpnd's own series
are prefixed dvpnd_.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from dvpnd.daemon.status import VERSION, Snapshot
from dvpnd.roster.model import REASONS
from dvpnd.serve.api import Counters, View


def collect_snapshot(snap: Snapshot, counters: Counters, stale_after: int, now: float) -> Iterator[Any]:
    """The metric families for one snapshot (pure)."""
    labels = ["interface", "public_key", "allowed_ips", "friendly_name"]
    sent = CounterMetricFamily("wireguard_sent_bytes", "Bytes sent to the peer", labels=labels)
    recv = CounterMetricFamily("wireguard_received_bytes", "Bytes received from the peer", labels=labels)
    hs = GaugeMetricFamily("wireguard_latest_handshake_seconds",
                           "UNIX timestamp of the latest handshake with the peer (0: never)", labels=labels)
    states = {"up": 0, "stale": 0, "never": 0, "idle": 0}
    for p in snap.peers:
        lv = [snap.interface, p.public_key, ",".join(p.allowed_ips), p.name]
        sent.add_metric(lv, p.tx_bytes)
        recv.add_metric(lv, p.rx_bytes)
        hs.add_metric(lv, int(p.last_handshake or 0))
        states[p.state(now, stale_after)] += 1
    yield from (sent, recv, hs)

    peers = GaugeMetricFamily("dvpnd_peers", "Peers by state (up, stale, never; idle: an overlay peer "
                              "without recent traffic)", labels=["state"])
    for state, n in states.items():
        peers.add_metric([state], n)
    yield peers
    yield GaugeMetricFamily("dvpnd_peers_stale", "Peers whose last handshake is older than stale_after",
                            value=states["stale"])
    yield CounterMetricFamily("dvpnd_reconcile", "Reconcile passes that succeeded",
                              value=counters.reconcile_count)
    yield CounterMetricFamily("dvpnd_reconcile_errors", "Reconcile passes that failed",
                              value=counters.reconcile_errors)
    yield GaugeMetricFamily("dvpnd_reconcile_duration_seconds", "Duration of the last successful reconcile",
                            value=counters.reconcile_duration)
    yield CounterMetricFamily("dvpnd_device_writes", "Writes to the WireGuard device",
                              value=counters.device_writes)
    yield GaugeMetricFamily("dvpnd_firewall_applied", "1 if the dvpn nftables table is in force",
                            value=1 if snap.firewall_applied and not snap.firewall_error else 0)
    yield CounterMetricFamily("dvpnd_firewall_applies", "Times the nftables table was applied",
                              value=counters.firewall_applies)
    yield GaugeMetricFamily("dvpnd_firewall_rules", "Rules in the dvpn table", value=counters.firewall_rules)
    if snap.hubs:
        hub_up = GaugeMetricFamily("dvpnd_hub_up", "1 while probes through the hub are answered", labels=["hub"])
        in_use = GaugeMetricFamily("dvpnd_hub_in_use", "1 for the hub the overlay goes through", labels=["hub"])
        for h in snap.hubs:
            hub_up.add_metric([h.name], int(h.up))
            in_use.add_metric([h.name], int(h.in_use))
        yield hub_up
        yield in_use
        yield CounterMetricFamily("dvpnd_hub_failovers", "Times the overlay moved to another hub",
                                  value=snap.failovers)
    if snap.transports:
        tcp = GaugeMetricFamily("dvpnd_hub_transport_tcp", "1 while the tunnel to the hub goes over TCP (the relay)",
                                labels=["hub"])
        linked = GaugeMetricFamily("dvpnd_relay_connected", "1 while the relay's WebSocket to the hub is up",
                                   labels=["hub"])
        connects = CounterMetricFamily("dvpnd_relay_connects", "WebSocket connections made to the hub's relay",
                                       labels=["hub"])
        for t in snap.transports:
            tcp.add_metric([t.hub], int(t.transport == "tcp"))
            if t.transport == "tcp":
                linked.add_metric([t.hub], int(bool(t.connected)))
                connects.add_metric([t.hub], t.connects)
        yield tcp
        yield linked
        yield connects
    if snap.relay is not None:
        r = snap.relay
        yield GaugeMetricFamily("dvpnd_relay_running", "1 while dvpn-relay reports", value=int(r.running))
        yield GaugeMetricFamily("dvpnd_relay_spokes", "Spokes carried over TCP now", value=r.spokes)
        yield GaugeMetricFamily("dvpnd_relay_connections", "TCP connections to the relay", value=r.connections)
        yield CounterMetricFamily("dvpnd_relay_accepted", "Spokes that proved their key", value=r.accepted)
        refused = CounterMetricFamily("dvpnd_relay_refused", "Connections the relay refused or closed",
                                      labels=["reason"])
        for reason, n in sorted(r.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        yield CounterMetricFamily("dvpnd_relay_dropped", "Datagrams dropped for a spoke reading too slowly",
                                  value=r.dropped)
    if snap.dns is not None:
        yield GaugeMetricFamily("dvpnd_dns_names", "Names the resolver answers for (the roster's)",
                                value=len(snap.dns.names))
        yield GaugeMetricFamily("dvpnd_dns_listening", "1 if the resolver holds its listen addresses",
                                value=int(snap.dns.problem is None))
        answers = CounterMetricFamily("dvpnd_dns_answers", "Queries answered, by where (zone: from the roster; "
                                      "forward: the upstream's; other: refused) and answer code",
                                      labels=["source", "rcode"])
        for key, n in sorted(snap.dns.answers.items()):
            source, _, rcode = key.partition(" ")
            answers.add_metric([source, rcode], n)
        yield answers
    yield GaugeMetricFamily("dvpnd_interface_up", "1 if the WireGuard interface is up", value=int(snap.interface_up))
    yield GaugeMetricFamily("dvpnd_ready", "1 once the first reconcile is done", value=int(snap.ready))
    yield GaugeMetricFamily("dvpnd_snapshot_age_seconds", "Age of the data behind this scrape",
                            value=max(0.0, now - snap.taken))
    yield from collect_db(snap, now)
    yield from collect_roster(snap, now)
    info = InfoMetricFamily("dvpnd_build", "dvpnd build and node information")
    info.add_metric([], {"version": VERSION, "role": snap.role, "backend": snap.backend, "node": snap.node})
    yield info


def collect_roster(snap: Snapshot, now: float) -> Iterator[Any]:
    """The signed roster (confidential mode): what is in force, and what was refused, by why."""
    r = snap.roster
    if r is None:
        return
    layers = GaugeMetricFamily("dvpnd_peers_by_interface", "Peers of each WireGuard interface (a confidential "
                               "spoke: the transit to the hub, the overlay to other spokes)", labels=["interface"])
    counts: dict[str, int] = {}
    for p in snap.peers:
        counts[p.interface or snap.interface] = counts.get(p.interface or snap.interface, 0) + 1
    for ifname, n in sorted(counts.items()):
        layers.add_metric([ifname], n)
    yield layers
    yield GaugeMetricFamily("dvpnd_roster_serial", "Serial of the verified roster in force (0: none)",
                            value=r.serial or 0)
    yield GaugeMetricFamily("dvpnd_roster_members", "Members in the roster in force", value=r.members)
    yield GaugeMetricFamily("dvpnd_roster_age_seconds", "Time since the roster in force was signed",
                            value=max(0.0, now - r.issued) if r.issued else float("nan"))
    yield GaugeMetricFamily("dvpnd_roster_expiry_timestamp_seconds", "When the roster in force expires",
                            value=r.expires or 0)
    yield GaugeMetricFamily("dvpnd_roster_expired", "1 if the roster in force has expired (it stays in force)",
                            value=int(r.expired(now)))
    refused = CounterMetricFamily("dvpnd_roster_refused", "Roster documents refused, by reason", labels=["reason"])
    for reason in REASONS:
        refused.add_metric([reason], r.refused.get(reason, 0))
    yield refused


def collect_db(snap: Snapshot, now: float) -> Iterator[Any]:
    """PostgreSQL and backup series (spokes with a database)."""
    v = snap.postgres
    if v is not None:
        yield GaugeMetricFamily("dvpnd_postgres_up", "1 if the local PostgreSQL server answers", value=int(v.up))
        role = GaugeMetricFamily("dvpnd_postgres_role", "The server's role (1 for the current one)", labels=["role"])
        for name in ("primary", "replica", "down"):
            role.add_metric([name], int(v.role == name))
        yield role
        if v.role == "primary":
            yield GaugeMetricFamily("dvpnd_postgres_replicas_connected", "Replicas streaming from this primary",
                                    value=sum(1 for r in v.replicas if r.state == "streaming"))
            lag = GaugeMetricFamily("dvpnd_postgres_replica_lag_bytes", "WAL not yet replayed by a replica",
                                    labels=["replica"])
            for r in v.replicas:
                if r.lag_bytes is not None:
                    lag.add_metric([r.name], r.lag_bytes)
            yield lag
            active = GaugeMetricFamily("dvpnd_postgres_slot_active", "1 if a replica uses the slot", labels=["slot"])
            kept = GaugeMetricFamily("dvpnd_postgres_slot_retained_bytes", "WAL the slot holds back", labels=["slot"])
            for s in v.slots:
                active.add_metric([s.name], int(s.active))
                if s.retained_bytes is not None:
                    kept.add_metric([s.name], s.retained_bytes)
            yield from (active, kept)
        if v.role == "replica":
            yield GaugeMetricFamily("dvpnd_postgres_replication_lag_seconds",
                                    "Age of the last replayed transaction while behind (0 when caught up)",
                                    value=v.lag_sec or 0.0)
            yield GaugeMetricFamily("dvpnd_postgres_replication_lag_bytes", "WAL received but not yet replayed",
                                    value=v.lag_bytes or 0)
            yield GaugeMetricFamily("dvpnd_postgres_streaming", "1 if the WAL receiver is streaming",
                                    value=int(v.receiver_status == "streaming"))
    yield from collect_pgbackrest(snap, now)


def collect_pgbackrest(snap: Snapshot, now: float) -> Iterator[Any]:
    """The backups (pgBackRest): per repository (local, offsite) and per operation."""
    br = snap.pgbackrest
    if br is None:
        return
    names = {1: "local", 2: "offsite"}
    last = br.last_success
    yield GaugeMetricFamily("dvpnd_backup_last_success_timestamp_seconds",
                            "UNIX time of the newest backup in the local repository (0: none)", value=last or 0)
    yield GaugeMetricFamily("dvpnd_backup_overdue", "1 if the newest backup is older than twice the differential "
                            "interval (primary only)", value=int(br.overdue(now)))
    repo_ok = GaugeMetricFamily("dvpnd_pgbackrest_repo_ok", "1 if pgBackRest reports the repository ok",
                                labels=["repo"])
    backups = GaugeMetricFamily("dvpnd_pgbackrest_backups", "Backups in the repository", labels=["repo"])
    full = GaugeMetricFamily("dvpnd_pgbackrest_last_full_timestamp_seconds", "UNIX time of the newest full backup",
                             labels=["repo"])
    for r in br.repos:
        name = names.get(r.key, str(r.key))
        repo_ok.add_metric([name], int(r.ok))
        backups.add_metric([name], r.backups)
        full.add_metric([name], r.last_full or 0)
    yield from (repo_ok, backups, full)
    if br.offsite_behind is not None:
        yield GaugeMetricFamily("dvpnd_pgbackrest_offsite_behind_segments",
                                "WAL segments archived locally but not yet offsite", value=br.offsite_behind)
    yield GaugeMetricFamily("dvpnd_pgbackrest_pg_wal_bytes", "Bytes in pg_wal", value=br.wal_bytes)
    yield GaugeMetricFamily("dvpnd_pgbackrest_wal_waiting_segments", "Segments in pg_wal waiting to be archived",
                            value=br.wal_waiting)
    ops = GaugeMetricFamily("dvpnd_pgbackrest_last_ok_timestamp_seconds",
                            "UNIX time each pgBackRest operation last succeeded", labels=["op"])
    for op, t in br.last_ok:
        ops.add_metric([op], t)
    yield ops
    yield GaugeMetricFamily("dvpnd_pgbackrest_running", "1 while a pgBackRest operation runs",
                            value=int(br.running is not None))
    yield GaugeMetricFamily("dvpnd_pgbackrest_problems", "Problems pgBackRest's supervision reports",
                            value=len(br.problems))


class SnapshotCollector(Collector):
    def __init__(self, view: View):
        self.view = view

    def collect(self) -> Iterator[Any]:
        pub = self.view.published()
        return collect_snapshot(pub.snapshot, pub.counters, pub.stale_after, pub.now)


def make_registry(view: View) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(view))
    return registry
