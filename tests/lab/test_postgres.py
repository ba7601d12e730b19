"""PostgreSQL 15 on the spokes, for real: replication over the overlay, the firewall around
5432, the database in dvpnd's status, backups by pgBackRest (the primary's, into its local
repository and offsite on the lab's S3 stand-in, moto from PyPI) restored on another spoke, and a
manual failover. pgBackRest's faults are tests/lab/test_pgbackrest.py's."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from dvpnd.lab import cluster as lab
from dvpnd.lab import pg as labpg
from dvpnd.postgres.server import as_user

from .conftest import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]


def node(L: Lab, name: str) -> lab.Node:
    return L.nodes[name]


@contextmanager
def config_change(L: Lab, name: str, change: dict[str, Any], restart: bool = False) -> Iterator[None]:
    """Edit a spoke's dvpnd.yaml (deep-merged), reload or restart; put it back afterwards."""
    n = node(L, name)
    assert n.config is not None
    path = Path(n.config)
    before = path.read_text()
    doc = yaml.safe_load(before)
    for section, values in change.items():
        doc.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def apply() -> None:
        if restart or not lab.pid_alive(lab.read_pid(n)):
            lab.stop_daemon(n)  # a daemon a test killed is simply started again
            lab.start_daemon(n)
            lab.wait_ready(n)
        else:
            assert L.request(name, "reload")["ok"]

    apply()
    try:
        yield
    finally:
        path.write_text(before)
        apply()


def backup_now(L: Lab, name: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return L.dvpnctl(name, "backup", "now", "--config", str(node(L, name).config), check=check)


def test_rows_written_on_the_primary_through_the_overlay_reach_both_replicas(PG: Lab) -> None:
    a, b, c = node(PG, "spoke-a"), node(PG, "spoke-b"), node(PG, "spoke-c")
    marker = f"row {time.time()}"
    labpg.app_psql(b, "10.88.0.11", "CREATE TABLE IF NOT EXISTS t (note text);"
                                    f"INSERT INTO t VALUES ('{marker}')")
    for replica in (b, c):
        PG.wait(f"the row on {replica.name}", lambda r=replica: labpg.psql(
            r, f"SELECT count(*) FROM t WHERE note = '{marker}'", db="app", check=False) == "1", timeout=10)
    # The replicas stream from the primary's overlay address, from their own overlay addresses.
    rows = labpg.psql(a, "SELECT application_name, client_addr, state FROM pg_stat_replication ORDER BY 1")
    assert rows.splitlines() == ["spoke-b|10.88.0.12|streaming", "spoke-c|10.88.0.13|streaming"]
    assert labpg.psql(b, "SELECT sender_host, status FROM pg_stat_wal_receiver") == "10.88.0.11|streaming"
    # A replica refuses writes (asked from another spoke: a node's own overlay address is rejected).
    r = labpg.app_psql(c, "10.88.0.12", f"INSERT INTO t VALUES ('{marker}')", check=False)
    assert r.returncode != 0 and "read-only transaction" in r.stderr


def test_postgres_listens_on_the_overlay_and_5432_is_closed_to_outside_and_hub(PG: Lab) -> None:
    listening = PG.run("spoke-a", "ss", "-Hltn", "sport", "= :5432").stdout.split()
    assert "10.88.0.11:5432" in listening
    assert not any(a.startswith(("0.0.0.0", "*", "[::]", "198.51.100.")) for a in listening if ":5432" in a)
    assert PG.tcp("spoke-c", "10.88.0.11", 5432) == {5432: "open"}
    assert PG.tcp("spoke-b", "10.88.0.11", 5432) == {5432: "open"}
    assert PG.tcp("outside", PG.public("spoke-a"), 5432) != {5432: "open"}
    assert PG.tcp("hub", "10.88.0.11", 5432) != {5432: "open"}
    assert PG.tcp("hub", PG.public("spoke-a"), 5432) != {5432: "open"}
    # pg_hba: password (scram) from other spokes; a wrong one is refused.
    c = node(PG, "spoke-c")
    argv = ["/usr/lib/postgresql/15/bin/psql", "host=10.88.0.11 user=app dbname=app connect_timeout=5",
            "-XAtc", "SELECT 1"]
    bad = subprocess.run(lab.node_argv(c, argv), capture_output=True, text=True,
                         env=dict(lab.node_env(c), PGPASSWORD="wrong"), timeout=30)
    assert bad.returncode != 0 and "password authentication failed" in bad.stderr
    hba = (Path(lab.pg_paths(node(PG, "spoke-a"))["data_dir"]) / "dvpn_hba.conf").read_text()
    assert "10.88.0.1/32       reject" in hba and "scram-sha-256" in hba and " trust" not in hba


def test_status_metrics_and_dvpnctl_report_the_database(PG: Lab) -> None:
    a = json.loads(_status(PG, "spoke-a"))
    b = json.loads(_status(PG, "spoke-b"))
    assert a["postgres"] == {"role": "primary", "replication_lag_sec": None}
    assert b["postgres"]["role"] == "replica" and isinstance(b["postgres"]["replication_lag_sec"], float)
    assert set(a["backup"]) == {"last_success", "age_sec", "overdue"}
    detail = PG.status("spoke-a")["postgres"]
    assert [(r["name"], r["state"]) for r in detail["replicas"]] == [("spoke-b", "streaming"), ("spoke-c", "streaming")]
    assert [(s["name"], s["active"]) for s in detail["slots"]] == [("spoke_b", True), ("spoke_c", True)]
    metrics = PG.run("spoke-a", "curl", "-s", "http://127.0.0.1:9586/metrics").stdout
    assert "dvpnd_postgres_up 1.0" in metrics
    assert "dvpnd_postgres_replicas_connected 2.0" in metrics
    assert 'dvpnd_postgres_role{role="primary"} 1.0' in metrics
    text = PG.dvpnctl("spoke-a", "pg", "status", "--config", str(node(PG, "spoke-a").config)).stdout
    assert "postgres: primary" in text and "replica spoke-b" in text and "slot spoke_c" in text


def _status(L: Lab, name: str) -> str:
    return L.run(name, "curl", "-s", f"http://{L.public(name)}:8000/status").stdout


def test_the_primary_backs_up_into_both_repositories_and_the_replicas_schedule_nothing(PG: Lab) -> None:
    """dvpnd's pgBackRest on the primary: the stanza, a first full backup into the local
    repository and offsite (the S3 stand-in, encrypted); the replicas run no backup."""
    b = PG.wait("a full backup in both repositories on spoke-a", lambda: (
        (st := PG.status("spoke-a").get("backup") or {}).get("repos") and len(st["repos"]) == 2
        and all(r["ok"] and r["last_full_time"] for r in st["repos"]) and st), timeout=240)
    assert b["tool"] == "pgbackrest" and b["primary"] and b["stanza"] == "lab" and not b["problems"], b
    assert [r["name"] for r in b["repos"]] == ["local", "offsite"]
    for name in ("spoke-b", "spoke-c"):
        rb = PG.status(name)["backup"]
        assert not rb["primary"] and not rb["running"] and "backup-full" not in rb["last_ok"], rb
    public = json.loads(_status(PG, "spoke-a"))["backup"]
    assert public["last_success"] and public["overdue"] is False
    metrics = PG.run("spoke-a", "curl", "-s", "http://127.0.0.1:9586/metrics").stdout
    assert 'dvpnd_pgbackrest_repo_ok{repo="offsite"} 1.0' in metrics
    text = PG.dvpnctl("spoke-a", "backup", "status", "--config", str(node(PG, "spoke-a").config)).stdout
    assert "stanza lab" in text and "offsite" in text and "problem" not in text


def test_another_spoke_restores_the_offsite_repository_into_a_server_that_holds_the_data(PG: Lab) -> None:
    """spoke-a's commits, backed up and archived offsite, restored on spoke-c (as after losing
    spoke-a with its volume): `backup now`, then `backup restore --from offsite` into scratch,
    a server started on it on a private socket holds the row written before the backup."""
    a, c = node(PG, "spoke-a"), node(PG, "spoke-c")
    marker = f"restore {time.time()}"
    labpg.app_psql(node(PG, "spoke-b"), "10.88.0.11", f"CREATE TABLE IF NOT EXISTS t (note text);"
                                                    f"INSERT INTO t VALUES ('{marker}')")
    PG.wait("the first full backup", lambda: "backup-full" in PG.status("spoke-a")["backup"]["last_ok"], timeout=240)
    backup_now(PG, "spoke-a")
    target = Path(c.dir) / "restored"
    sock = Path(c.dir) / "restored-sock"
    out = PG.dvpnctl("spoke-c", "backup", "restore", "--from", "offsite", "--target", str(target),
                     "--config", str(c.config)).stdout
    assert "restored the offsite repository to latest" in out
    sock.mkdir()
    subprocess.run(["chown", "postgres:postgres", str(sock)], check=True)
    pg = labpg._pg(c)
    server = subprocess.Popen(lab.node_argv(c, as_user(pg, [
        str(pg.bin_dir / "postgres"), "-D", str(target), "-c", "listen_addresses=", "-c", "port=5499",
        "-c", f"unix_socket_directories={sock}"])), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        q = as_user(pg, [str(pg.bin_dir / "psql"), "-h", str(sock), "-p", "5499", "-U", "postgres", "-d", "app",
                         "-XAtc", f"SELECT count(*) FROM t WHERE note = '{marker}'"])
        got = PG.wait("the restored server", lambda: PG.run("spoke-c", *q, check=False).stdout.strip(), timeout=60)
        assert got == "1"
        # the copy archives nothing into the stanza it came from
        off = PG.run("spoke-c", *as_user(pg, [str(pg.bin_dir / "psql"), "-h", str(sock), "-p", "5499", "-U",
                                               "postgres", "-XAtc", "SHOW archive_mode"])).stdout.strip()
        assert off == "off"
        # never under a running server, even with --force: not the copy, not spoke-c's own
        for where in (target, labpg._pg(c).data_dir):
            r = PG.dvpnctl("spoke-c", "backup", "restore", "--from", "offsite", "--target", str(where), "--force",
                           "--config", str(c.config), check=False)
            assert r.returncode == 1 and ("running" in r.stderr or "postmaster.pid" in r.stderr), r.stderr
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    try:
        # over a directory that holds files: refused, then with --force a delta restore over it
        r = PG.dvpnctl("spoke-c", "backup", "restore", "--target", str(target), "--config", str(c.config),
                       check=False)
        assert r.returncode == 1 and "not an empty directory" in r.stderr
        target.chmod(0o750)  # (a mode that differs from the backed-up cluster's)
        out = PG.dvpnctl("spoke-c", "backup", "restore", "--from", "offsite", "--target", str(target), "--force",
                         "--config", str(c.config)).stdout
        assert "over what was there (delta), archiving off in the copy" in out
        # the directory takes the backed-up cluster's mode (pgBackRest's manifest), as a restore
        # into a new directory does: spoke-a's data directory's, whatever the target had
        primary = Path(yaml.safe_load(Path(a.config or "").read_text())["postgres"]["data_dir"])
        assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(primary.stat().st_mode) == 0o700
    finally:
        subprocess.run(["rm", "-rf", str(target), str(sock)], check=True)
    # the offsite secrets are in no log nor status
    secret = (lab.LAB_DIR / "offsite.env").read_text().split("AWS_SECRET_ACCESS_KEY=")[1].strip()
    passphrase = (lab.LAB_DIR / "offsite.passphrase").read_text().strip()
    for where in ((Path(a.dir) / "dvpnd.log").read_text(), (Path(c.dir) / "dvpnd.log").read_text(),
                  json.dumps(PG.status("spoke-a")), out):
        assert secret not in where and passphrase not in where


def test_a_database_that_is_down_degrades_the_node_and_recovers(PG: Lab) -> None:
    c = node(PG, "spoke-c")
    pid = lab.read_pid(c)
    labpg.stop_server(c)
    try:
        st = PG.wait("degraded", lambda: PG.status("spoke-c")["state"] == "degraded" and PG.status("spoke-c"),
                     timeout=20)
        assert st["postgres"]["role"] == "down" and "postgres down" in st["problems"]
        # The public page serves the once-a-second snapshot: it follows within a second or so.
        public = PG.wait("the status page to say so", lambda: (p := json.loads(_status(PG, "spoke-c")))["state"]
                         == "degraded" and p, timeout=10)
        assert public["postgres"] == {"role": "down", "replication_lag_sec": None}
    finally:
        labpg.start_server(c)
        labpg.wait_server(c)
    PG.wait("ok again", lambda: PG.status("spoke-c")["state"] == "ok", timeout=30)
    assert lab.read_pid(c) == pid  # dvpnd never restarted


def test_turning_the_database_off_is_refused_until_a_restart(PG: Lab) -> None:
    path = Path(str(node(PG, "spoke-c").config))
    before = path.read_text()
    doc = yaml.safe_load(before)
    del doc["postgres"], doc["backup"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        reply = PG.request("spoke-c", "reload")
        assert not reply["ok"] and reply["bad_input"]
        assert reply["problems"] == [f"{path}: changing postgres.enabled/backup.enabled, backup.pgbackrest needs a restart "
                                     "of dvpnd"]
        assert PG.status("spoke-c")["postgres"]["up"]  # still watched
    finally:
        path.write_text(before)
    assert PG.request("spoke-c", "reload")["ok"]


def test_manual_failover_promote_and_follow(PG: Lab) -> None:
    a, b, c = node(PG, "spoke-a"), node(PG, "spoke-b"), node(PG, "spoke-c")
    try:
        labpg.stop_server(a)  # the primary is lost
        out = PG.dvpnctl("spoke-b", "pg", "promote", "--config", str(b.config)).stdout
        assert "now the primary" in out and "dvpnctl pg follow 10.88.0.12" in out
        out = PG.dvpnctl("spoke-c", "pg", "follow", "10.88.0.12", "--config", str(c.config)).stdout
        assert "streaming from 10.88.0.12" in out
        marker = f"after failover {time.time()}"
        labpg.app_psql(c, "10.88.0.12", f"CREATE TABLE IF NOT EXISTS t (note text); INSERT INTO t VALUES ('{marker}')")
        PG.wait("the row on spoke-c", lambda: labpg.psql(
            c, f"SELECT count(*) FROM t WHERE note = '{marker}'", db="app", check=False) == "1", timeout=10)
        PG.wait("dvpnd sees the new roles", lambda: PG.status("spoke-b")["postgres"]["role"] == "primary"
                and PG.status("spoke-c")["postgres"]["upstream"] == "10.88.0.12", timeout=20)
        # Promoting a primary is refused.
        r = PG.dvpnctl("spoke-b", "pg", "promote", "--config", str(b.config), check=False)
        assert r.returncode == 1 and "already a primary" in r.stderr
    finally:
        lab.down()  # the cluster's shape changed; the next user gets a fresh lab
