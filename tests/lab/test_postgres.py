"""PostgreSQL 15 on the spokes, for real: replication over the overlay, the firewall around
5432, the database in dvpnd's status, and verified backups under interruption, a full disk,
retention, restore and a manual failover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from dvpnd.lab import cluster as lab
from dvpnd.lab import pg as labpg
from dvpnd.postgres.backup import list_backups
from dvpnd.postgres.server import as_user

from .conftest import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]


def node(L: Lab, name: str) -> lab.Node:
    return L.nodes[name]


def backups_dir(L: Lab, name: str) -> Path:
    return Path(lab.pg_paths(node(L, name))["backups"])


def complete(directory: Path) -> list[str]:
    return [e.name for e in list_backups(directory)]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) if directory.exists() else []


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


def test_a_scheduled_backup_completes_and_verifies_on_every_spoke(PG: Lab) -> None:
    for name in ("spoke-a", "spoke-b", "spoke-c"):
        st = PG.wait(f"a backup on {name}", lambda n=name: (PG.status(n).get("backup") or {}).get("last_success")
                     and PG.status(n), timeout=60)
        b = st["backup"]
        assert b["kept"] >= 1 and b["last_error"] is None and not b["overdue"]
        names = complete(backups_dir(PG, name))
        assert b["last_name"] == names[0]
        meta = json.loads((backups_dir(PG, name) / names[0] / "backup.json").read_text())
        assert meta["verified"] is True and meta["server_role"] == ("primary" if name == "spoke-a" else "replica")
        assert meta["files"] == ["backup_manifest", "base.tar.gz", "pg_wal.tar.gz"]
        assert sorted(p.name for p in (backups_dir(PG, name) / names[0]).iterdir()) == [
            "backup.json", "backup_manifest", "base.tar.gz", "pg_wal.tar.gz"]
        assert meta["size_bytes"] > 0 and meta["extracted_bytes"] > meta["size_bytes"]
        PG.dvpnctl(name, "backup", "verify", "--config", str(node(PG, name).config))
    metrics = PG.run("spoke-b", "curl", "-s", "http://127.0.0.1:9586/metrics").stdout
    assert "dvpnd_backup_last_success_timestamp_seconds 0.0" not in metrics
    assert "dvpnd_backup_overdue 0.0" in metrics


def writers(directory: Path) -> list[int]:
    """Processes whose command line names a directory under `directory`."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(directory).encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
    return found


def _wait_running(L: Lab, name: str) -> int:
    return int(L.wait("the backup to start", lambda: (L.status(name).get("backup") or {}).get("running_pid"),
                      timeout=20, step=0.05))


def test_a_backup_killed_midway_leaves_no_entry_and_cleans_up(PG: Lab) -> None:
    d = backups_dir(PG, "spoke-c")
    before = complete(d)
    with config_change(PG, "spoke-c", {"backup": {"max_rate": "32k"}}):
        # 1. pg_basebackup killed.
        proc = PG.popen("spoke-c", sys.executable, "-m", "dvpnd.cli", "backup", "now",
                        "--config", str(node(PG, "spoke-c").config))
        pid = _wait_running(PG, "spoke-c")
        time.sleep(1)
        assert any(p.startswith(".partial-") for p in leftovers(d))
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "killed by signal 9" in err, (out, err)
        assert complete(d) == before and leftovers(d) == [] and writers(d) == []
        st = PG.status("spoke-c")["backup"]
        assert "killed by signal 9" in st["last_error"] and st["running_pid"] is None

        # 2. dvpnd itself killed mid-backup: its pg_basebackup dies with it; the next start cleans up.
        proc = PG.popen("spoke-c", sys.executable, "-m", "dvpnd.cli", "backup", "now",
                        "--config", str(node(PG, "spoke-c").config))
        child = _wait_running(PG, "spoke-c")
        time.sleep(1)
        lab.stop_daemon(node(PG, "spoke-c"), signal.SIGKILL)
        proc.communicate(timeout=30)
        PG.wait("pg_basebackup to die with dvpnd", lambda: not Path(f"/proc/{child}").exists(), timeout=10)
        assert complete(d) == before and any(p.startswith(".partial-") for p in leftovers(d))
        # Its WAL helper may live on; the next start ends it (by its recorded process group).
        lab.start_daemon(node(PG, "spoke-c"))
        lab.wait_ready(node(PG, "spoke-c"))
        PG.wait("the partial backup removed at start", lambda: leftovers(d) == [] and writers(d) == [], timeout=20)
        assert complete(d) == before
        log = (Path(node(PG, "spoke-c").dir) / "dvpnd.log").read_text()
        assert "left by an interrupted backup" in log


def test_a_full_disk_leaves_no_entry_and_a_backup_that_cannot_fit_is_refused(PG: Lab) -> None:
    c = node(PG, "spoke-c")
    small = Path(c.dir) / "small-backups"
    small.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m,mode=0700", "dvpn-test-small", str(small)], check=True)
    try:
        with config_change(PG, "spoke-c", {"backup": {"dir": str(small), "max_rate": "32k"}}, restart=True):
            PG.wait("no backup running", lambda: not PG.status("spoke-c")["backup"]["running_pid"], timeout=60)
            for p in small.iterdir():  # the scheduled first backup may have run: start empty
                subprocess.run(["rm", "-rf", str(p)], check=True)
            proc = PG.popen("spoke-c", sys.executable, "-m", "dvpnd.cli", "backup", "now", "--config", str(c.config))
            _wait_running(PG, "spoke-c")
            time.sleep(0.5)
            # Fill the disk under the running backup.
            subprocess.run(["dd", "if=/dev/zero", f"of={small}/filler", "bs=1M", "status=none"], check=False)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 1 and "No space left on device" in err, (out, err)
            assert complete(small) == [] and leftovers(small) == []
            assert "No space left" in PG.status("spoke-c")["backup"]["last_error"]

            # With room for the backup, it works; then leave less room than the last one needed.
            (small / "filler").unlink()
            with config_change(PG, "spoke-c", {"backup": {"max_rate": "1024M"}}):
                backup_now(PG, "spoke-c")
                done = complete(small)
                assert len(done) == 1
                free = int(subprocess.run(["df", "--output=avail", "-B1", str(small)], capture_output=True,
                                          text=True).stdout.split()[1])
                meta = json.loads((small / done[0] / "backup.json").read_text())
                keep_free = (meta["size_bytes"] + meta["extracted_bytes"]) // 2
                subprocess.run(["fallocate", "-l", str(free - keep_free), str(small / "filler")], check=True)
                r = backup_now(PG, "spoke-c", check=False)
                assert r.returncode == 1 and "backup refused" in r.stderr and "free" in r.stderr, r.stderr
                assert complete(small) == done and leftovers(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)
        small.rmdir()


def test_retention_keeps_the_newest_verified_backups(PG: Lab) -> None:
    d = backups_dir(PG, "spoke-b")
    with config_change(PG, "spoke-b", {"backup": {"keep_last": 2}}):
        made = []
        for _ in range(3):
            backup_now(PG, "spoke-b")
            made.append(complete(d)[0])
            time.sleep(1.1)  # backups are named by the second
        assert complete(d) == [made[2], made[1]]
        assert leftovers(d) == []
    listing = PG.dvpnctl("spoke-b", "backup", "list", "--config", str(node(PG, "spoke-b").config)).stdout
    assert made[2] in listing and made[0] not in listing


def test_restore_round_trips_into_a_server_that_holds_the_data(PG: Lab) -> None:
    a = node(PG, "spoke-a")
    marker = f"restore {time.time()}"
    labpg.app_psql(node(PG, "spoke-b"), "10.88.0.11", f"CREATE TABLE IF NOT EXISTS t (note text);"
                                                    f"INSERT INTO t VALUES ('{marker}')")
    backup_now(PG, "spoke-a")
    target = Path(a.dir) / "restored"
    sock = Path(a.dir) / "restored-sock"
    out = PG.dvpnctl("spoke-a", "backup", "restore", "--to", str(target), "--config", str(a.config)).stdout
    assert "checked it against its manifest" in out
    sock.mkdir()
    subprocess.run(["chown", "postgres:postgres", str(sock)], check=True)
    pg = labpg._pg(a)
    server = subprocess.Popen(lab.node_argv(a, as_user(pg, [
        str(pg.bin_dir / "postgres"), "-D", str(target), "-c", "listen_addresses=", "-c", "port=5499",
        "-c", f"unix_socket_directories={sock}"])), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        q = as_user(pg, [str(pg.bin_dir / "psql"), "-h", str(sock), "-p", "5499", "-U", "postgres", "-d", "app",
                         "-XAtc", f"SELECT count(*) FROM t WHERE note = '{marker}'"])
        got = PG.wait("the restored server", lambda: PG.run("spoke-a", *q, check=False).stdout.strip(), timeout=30)
        assert got == "1"
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
        subprocess.run(["rm", "-rf", str(target), str(sock)], check=True)


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
        assert reply["problems"] == [f"{path}: changing postgres.enabled/backup.enabled needs a restart of dvpnd"]
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
