"""pgBackRest's configuration as dvpnd renders it (dvpnd/postgres/pgbackrest.py) driving the real
pgBackRest 2.45 against a real PostgreSQL 15 (as root: the server and pgBackRest run as the
postgres user, on a Unix socket only): a full backup into the local repository, WAL archived
asynchronously by the server's archive_command, and a point-in-time restore that brings a
dropped table back with every row, with archiving off in the copy; and an encrypted offsite
repository on an S3 API (moto's standalone server from PyPI, the only S3 server these machines
can install, behind Debian's stunnel with a CA of the test's own) whose objects hold no
plaintext, where the unencrypted local repository does. Then dvpnd's own supervision (BackRest,
the runner as postgres): both repositories, the store unreachable and back, the spoke lost
mid-write and restored from offsite (the commits lost, measured); faults against moto checking
signatures and policies (a wrong secret, a missing bucket, a wrong passphrase, a full disk, a
kill -9 mid-backup); and a promoted replica taking over the shared offsite stanza. The systemd
path (dvpn-pgbackrest@OP.service) is tested in the VM (packaging/vm/dvpn-vmtest)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dvpnd.lab.s3 import S3_NAME, StandIn
from dvpnd.postgres.conf import render_auto_conf
from dvpnd.postgres.pgbackrest import (
    S3,
    Plan,
    Repo,
    archive_settings,
    backup_argv,
    base_argv,
    copy_spool,
    render_conf,
    render_secrets,
    restore_argv,
)

BIN = Path("/usr/lib/postgresql/15/bin")
pytestmark = [pytest.mark.root, pytest.mark.slow]


# --- the real parts -------------------------------------------------------------------------

def _as_postgres(argv: list[str]) -> list[str]:
    u = pwd.getpwnam("postgres")
    return ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--init-groups", "--", *argv]


def _run(argv: list[str], timeout: float = 120) -> str:
    r = subprocess.run(_as_postgres(argv), capture_output=True, text=True, timeout=timeout, cwd="/")
    assert r.returncode == 0, f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _sql(sock: Path, port: int, sql: str) -> str:
    return _run([str(BIN / "psql"), "-X", "-h", str(sock), "-p", str(port), "-U", "postgres", "-d", "postgres",
                 "-Atqc", sql]).strip()


def _workdir(*extra: str) -> Path:
    """A directory under /var/tmp with the subdirectories a test cluster and pgBackRest use,
    the postgres user's (removed by the caller)."""
    home = Path(tempfile.mkdtemp(prefix="dvpn-pgbr-", dir="/var/tmp"))
    try:
        os.chmod(home, 0o755)
        u = pwd.getpwnam("postgres")
        for d in ("data", "sock", "logs", "repo", "pgbackrest", "pgbackrest/conf.d", "pgbackrest/log", *extra):
            (home / d).mkdir(mode=0o700)
            os.chown(home / d, u.pw_uid, u.pw_gid)
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    return home


def _remove(home: Path, timeout: float = 60) -> None:
    """Remove a test's directory once the pgBackRest processes working in it have ended: the
    server's asynchronous archive-push outlives the server by a moment (and would make its spool
    again after the removal). They are this test's own (their command lines name its directory):
    waited for, then ended by PID."""
    def ours() -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if str(home).encode() in (d / "cmdline").read_bytes():
                        pids.append(int(d.name))
                except OSError:
                    pass
        return pids

    deadline = time.monotonic() + timeout
    while ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in ours():
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    shutil.rmtree(home, ignore_errors=True)


def _start_primary(home: Path, p: Plan, secrets: str) -> None:
    """pgBackRest's files for `p` (the postgres user's, 0600), a new cluster in p.pg_path on a
    Unix socket only, archiving through pgBackRest, started."""
    u = pwd.getpwnam("postgres")
    for path, text in ((p.conf, render_conf(p)), (p.secrets, secrets)):
        path.write_text(text)
        os.chown(path, u.pw_uid, u.pw_gid)
        path.chmod(0o600)
    _run([str(BIN / "initdb"), "-D", str(p.pg_path), "-A", "trust", "-U", "postgres", "--no-sync"])
    auto = p.pg_path / "postgresql.auto.conf"
    auto.write_text(render_auto_conf(auto.read_text(), {**archive_settings(p), "listen_addresses": "",
                                                        "unix_socket_directories": str(p.pg_socket),
                                                        "port": str(p.pg_port)}))
    _run([str(BIN / "pg_ctl"), "-D", str(p.pg_path), "-w", "-l", str(home / "logs" / "data.log"), "start"])


def test_a_dropped_table_comes_back_by_point_in_time_restore_from_the_local_repository() -> None:
    assert shutil.which("pgbackrest"), "pgbackrest is not installed (./dev installs Debian's)"
    home = _workdir("restored")
    pids: list[Path] = []
    try:
        port = 55000 + os.getpid() % 1000
        p = Plan(stanza="lab", pg_path=home / "data", pg_port=port, pg_socket=home / "sock", home=home / "pgbackrest",
                 repos=(Repo(1, str(home / "repo"), 2),), process_max=2, archive_timeout=5)
        _start_primary(home, p, render_secrets(p))
        pids.append(p.pg_path)
        _run([*base_argv(p), "stanza-create"])
        _run([*base_argv(p), "check"])
        _run(backup_argv(p, "full", 1), timeout=300)
        _sql(p.pg_socket, port, "CREATE TABLE t AS SELECT g AS i FROM generate_series(1, 1000) g")
        time.sleep(1.1)
        target = _sql(p.pg_socket, port, "SELECT now()")
        time.sleep(1.1)
        _sql(p.pg_socket, port, "DROP TABLE t")
        _run([*base_argv(p), "check"])  # switches WAL and waits until it is archived
        info = _run([*base_argv(p), "info"])
        assert "full backup" in info and "wal archive min/max" in info, info

        # the copy is restored beside the running primary, and leaves the primary's spool alone:
        # pgBackRest's restore empties the archive queues of the spool it is given, and on the
        # live one the acknowledgement a running archive-push waits for would go with them (the
        # archiver then stalls for archive-timeout); a file of the test's own there stays
        queue = p.home / "spool" / "archive" / p.stanza
        assert (queue / "out").is_dir(), "the primary archived nothing asynchronously"
        (queue / "dvpn-test-marker").write_text("")
        restored = home / "restored"
        _run(restore_argv(p, restored, target, 1), timeout=300)
        assert (queue / "dvpn-test-marker").exists(), "the restore emptied the running primary's spool"
        _run([str(BIN / "pg_ctl"), "-D", str(p.pg_path), "-w", "-m", "fast", "stop"])
        pids.remove(p.pg_path)
        rauto = restored / "postgresql.auto.conf"
        assert f"--spool-path={copy_spool(p, restored)}" in rauto.read_text()  # (its archive-get queue too)
        rauto.write_text(render_auto_conf(rauto.read_text(), {"port": str(port + 1)}))
        _run([str(BIN / "pg_ctl"), "-D", str(restored), "-w", "-t", "120", "-l", str(home / "logs" / "restored.log"), "start"])
        pids.append(restored)
        deadline = time.monotonic() + 60
        while _sql(p.pg_socket, port + 1, "SELECT pg_is_in_recovery()") != "f":
            assert time.monotonic() < deadline, (home / "logs" / "restored.log").read_text()[-2000:]
            time.sleep(0.5)
        assert _sql(p.pg_socket, port + 1, "SELECT count(*), sum(i) FROM t") == "1000|500500"
        assert _sql(p.pg_socket, port + 1, "SHOW archive_mode") == "off"  # a copy never archives into the stanza
    finally:
        for running in pids:
            subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(running), "-w", "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
        _remove(home)



# --- the offsite repository: S3 API, encrypted on the spoke ---------------------------------
# moto's standalone server (PyPI) is the S3-API endpoint: no real S3 server installs on these
# machines. Nothing here is moto-specific: path-style requests, TLS verified against a CA of
# the test's own (pinned with repo2-storage-ca-file, verification on).

DOWNLOAD = """
import os, sys
import boto3
from botocore.config import Config
port, ca, bucket, dest = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{port}", verify=ca, region_name="us-east-1",
                  aws_access_key_id="AKIATEST", aws_secret_access_key="test-secret",
                  config=Config(s3={"addressing_style": "path"}))
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
    for o in page.get("Contents", []):
        path = os.path.join(dest, o["Key"].lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, o["Key"], path)
        print(o["Key"].lstrip("/"))
"""


def _download_bucket(root: Path, port: int, ca: Path, bucket: str, dest: Path) -> list[str]:
    """Every object of the bucket into `dest`, by boto3 from the venv (the S3 client everyone has)."""
    r = subprocess.run([str(root / ".venv" / "bin" / "python"), "-c", DOWNLOAD, str(port), str(ca), bucket, str(dest)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null"))
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def _holds(data: bytes, marker: bytes) -> bool:
    """Whether `data`, gunzipped if it is gzip (the test's compress-type), contains `marker`."""
    import gzip
    import zlib

    try:
        data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        pass
    return marker in data


@contextlib.contextmanager
def s3_stand_in(home: Path, users: bool = False) -> Iterator[tuple[int, Path, Callable[[bool], None], dict[str, list[str]]]]:
    """The S3 stand-in (dvpnd.lab.s3: moto behind stunnel, a CA of its own) on 127.0.0.1, the
    bucket dvpn-offsite made. Yields (the TLS port, the CA file, reachable(on), keys):
    reachable(False) stops stunnel (the store unreachable; moto keeps its data), reachable(True)
    starts it again. users=True: the store checks signatures and policies; keys: {"writer":
    [id, secret], "admin": [...]} (the writer may not delete a version nor change versioning)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".venv" / "bin" / "moto_server").exists():
        pytest.skip("moto missing: ./dev test makes the venv with the test extras (moto)")
    s = StandIn(home / "tls", root / ".venv" / "bin" / "python", "127.0.0.1", 56000 + os.getpid() % 1000,
                57000 + os.getpid() % 1000, users=users)
    s.start()
    try:
        yield s.port, s.ca, s.reachable, s.keys
    finally:
        s.stop()


def test_the_offsite_bucket_holds_no_plaintext_and_the_local_repository_does() -> None:
    root = Path(__file__).resolve().parents[2]
    assert shutil.which("pgbackrest"), "pgbackrest is not installed (./dev installs Debian's)"
    home = _workdir()
    running: Path | None = None
    try:
        with s3_stand_in(home) as (s3_port, ca, _, _):
            port = 55000 + (os.getpid() + 500) % 1000
            p = Plan(stanza="lab", pg_path=home / "data", pg_port=port, pg_socket=home / "sock",
                     home=home / "pgbackrest",
                     repos=(Repo(1, str(home / "repo"), 2),
                            Repo(2, "/spokes", 2, S3(S3_NAME, "dvpn-offsite", "us-east-1", "path", ca, "127.0.0.1",
                                                     s3_port), True)),
                     archive_timeout=5, compress_type="gz")
            _start_primary(home, p, render_secrets(p, "AKIATEST", "test-secret", "correct horse battery staple 2026"))
            running = p.pg_path
            _run([*base_argv(p), "stanza-create"])
            marker = f"dvpn-marker-{os.getpid()}-{time.time_ns()}"
            _sql(p.pg_socket, port, f"CREATE TABLE secret AS SELECT '{marker}'::text AS v FROM generate_series(1, 50)")
            _run(backup_argv(p, "full", 2), timeout=300)
            _run(backup_argv(p, "full", 1), timeout=300)
            _run([*base_argv(p), "check"])  # the marker's WAL archived to both repositories
            copy = home / "bucket"
            keys = _download_bucket(root, s3_port, ca, "dvpn-offsite", copy)
            assert any("/archive/" in k for k in keys) and any("/backup/" in k for k in keys), keys
            found = [k for k in keys if _holds((copy / k).read_bytes(), marker.encode())]
            assert found == [], f"plaintext in the offsite bucket: {found}"
            local = [f for f in (home / "repo").rglob("*") if f.is_file() and _holds(f.read_bytes(), marker.encode())]
            assert local, "the scan finds the marker in the unencrypted local repository (so it could fail above)"
            print(f"\n{len(keys)} objects in the bucket, none with the marker; {len(local)} local files with it")
    finally:
        if running is not None:
            subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(running), "-w", "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
        _remove(home)


# --- dvpnd supervising pgBackRest ------------------------------------------------------------
# The config is dvpnd's own YAML through its loader; dvpnd's BackRest writes pgBackRest's home
# and runs every operation through its runner as the postgres user (runner: direct, as in the
# lab and containers). The passphrase comes from a stand-in for Dstack's guest agent: a small
# aiohttp server on a Unix socket answering the documented POST /GetKey (the real agent runs
# only inside a Dstack CVM).

def _config(home: Path, port: int, s3_port: int, ca: Path, key: tuple[str, str] = ("AKIATEST", "test-secret"),
            bucket: str = "dvpn-offsite", name: str = "dvpnd.yaml",
            passphrase: str = "passphrase: dstack\n      dstack_socket: {home}/dstack.sock", node: str = "") -> Path:
    """dvpnd's YAML for a spoke whose server and pgBackRest home are in home/node."""
    from tests.test_config import SPOKE

    base = home / node

    creds = home / f"{name}.offsite.env"
    creds.write_text(f"AWS_ACCESS_KEY_ID={key[0]}\nAWS_SECRET_ACCESS_KEY={key[1]}\n")
    creds.chmod(0o600)
    text = SPOKE + f"""\
postgres:
  primary: 10.88.0.11
  data_dir: {base / "data"}
  socket_dir: {base / "sock"}
  port: {port}
backup:
  tool: pgbackrest
  pgbackrest:
    home: {base / "pgbr"}
    stanza: lab
    archive_timeout: 5
    io_timeout: 5
    runner: direct
    offsite:
      endpoint: {S3_NAME}
      host: 127.0.0.1
      port: {s3_port}
      bucket: {bucket}
      region: us-east-1
      uri_style: path
      path: /supervised
      ca_file: {ca}
      credentials_file: {creds}
      {passphrase.format(home=home)}
"""
    (home / name).write_text(text)
    return home / name


async def _getkey_stand_in(sock: Path, asked: list[dict[str, object]]) -> object:
    """A stand-in for Dstack's guest agent: POST /GetKey answers a key derived from the path
    (the real agent derives it from the app's identity in the TEE)."""
    import hashlib

    from aiohttp import web

    async def getkey(request: web.Request) -> web.Response:
        body = await request.json()
        asked.append(body)
        key = hashlib.sha256(b"stand-in app key " + str(body.get("path")).encode()).hexdigest()
        return web.json_response({"key": key, "signature_chain": ["00", "11"]})

    app = web.Application()
    app.router.add_post("/GetKey", getkey)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(sock)).start()
    return runner


def _as_postgres_ok(argv: list[str]) -> bool:
    return subprocess.run(_as_postgres(argv), capture_output=True, timeout=30).returncode == 0


def test_dvpnd_runs_pgbackrest_as_postgres_into_both_repositories_and_reports_the_offsite_lag() -> None:
    import asyncio

    from dvpnd.config.load import load_config
    from dvpnd.postgres.pgbackrest import plan_for
    from dvpnd.postgres.pgbr_supervisor import BackRest

    assert shutil.which("pgbackrest"), "pgbackrest is not installed (./dev installs Debian's)"
    home = _workdir()
    running: Path | None = None
    try:
        with s3_stand_in(home) as (s3_port, ca, reachable, _):
            port = 55000 + (os.getpid() + 700) % 1000
            config = load_config(_config(home, port, s3_port, ca))
            plan = plan_for(config)
            br = BackRest(config, environ={})
            asked: list[dict[str, object]] = []

            async def main() -> None:
                nonlocal running
                agent = await _getkey_stand_in(home / "dstack.sock", asked)
                try:
                    assert await br.prepare(), br.problem
                finally:
                    await agent.cleanup()  # type: ignore[attr-defined]
                # the server, archiving through the conf dvpnd wrote
                _run([str(BIN / "initdb"), "-D", str(plan.pg_path), "-A", "trust", "-U", "postgres", "--no-sync"])
                auto = plan.pg_path / "postgresql.auto.conf"
                auto.write_text(render_auto_conf(auto.read_text(), {
                    **archive_settings(plan), "listen_addresses": "", "unix_socket_directories": str(plan.pg_socket),
                    "port": str(port)}))
                _run([str(BIN / "pg_ctl"), "-D", str(plan.pg_path), "-w", "-l", str(home / "logs" / "data.log"),
                      "start"])
                running = plan.pg_path
                for op in ("stanza-create", "backup-full", "check", "drill"):
                    if op == "drill":  # (a file of the test's own in the primary's spool, which the drill leaves)
                        (plan.home / "spool" / "archive" / plan.stanza / "dvpn-test-marker").write_text("")
                    if not await br.run(op):
                        steps = json.loads((plan.home / "results" / f"{op}.json").read_text())["steps"]
                        raise AssertionError("\n".join([op, *(f"{s['args'][-1]}: {s['rc']}: {s['stderr']}" for s in steps)]))
                await br.refresh()

            asyncio.run(main())
            assert asked == [{"path": "dvpn/pgbackrest/lab", "purpose": "dvpn pgbackrest repository cipher"}]
            v = br.view()
            local, offsite = v["repos"]
            assert local["name"] == "local" and local["ok"] and local["backups"] == 1 and local["last_full"]
            assert offsite["name"] == "offsite" and offsite["ok"] and offsite["backups"] == 1, v
            assert v["offsite_behind_segments"] == 0 and v["problems"] == [], v
            # the restore drill: the newest backup restored, started on a socket of its own, asked
            assert br.drill_databases is not None and br.drill_databases >= 3, br.drill_databases
            assert not (plan.home / "drill" / "data").exists()  # (the scratch copy is removed)
            assert not (plan.home / "drill" / "spool").exists()  # (and its spool)
            assert (plan.home / "spool" / "archive" / plan.stanza / "dvpn-test-marker").exists()
            # who may write what: the postgres user cannot change what runs, nor where backups go
            for f in ("pgbackrest.conf", "runner.json", "conf.d/secrets.conf"):
                st = os.stat(plan.home / f)
                assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o640"), f
                assert not _as_postgres_ok(["sh", "-c", f"echo >> {plan.home / f}"]), f
            assert _as_postgres_ok(["test", "-r", str(plan.home / "conf.d/secrets.conf")])  # (it must read them)
            assert "cipher-pass" not in (plan.home / "pgbackrest.conf").read_text()

            # the store unreachable: commits go on, WAL waits, status says how far behind
            reachable(False)
            for i in range(3):
                _sql(plan.pg_socket, port, f"CREATE TABLE t{i} AS SELECT g FROM generate_series(1, 1000) g")
                _sql(plan.pg_socket, port, "SELECT pg_switch_wal()")
            time.sleep(8)  # (archive_timeout 5 s; the push to the local repository goes on)

            async def lagging() -> None:
                await br.refresh()

            asyncio.run(lagging())
            v = br.view()
            print(f"\nstore unreachable: offsite behind by {v['offsite_behind_segments']} segments, "
                  f"{v['wal_waiting_segments']} waiting in pg_wal")
            assert v["wal_waiting_segments"] >= 3 and v["offsite_behind_segments"] >= 3, v
            assert any("offsite behind by" in p for p in v["problems"]), v
            assert any(p.startswith("offsite repository: ") for p in v["problems"]), v
            # back: the backlog goes out, nothing lost
            reachable(True)
            deadline = time.monotonic() + 90
            while True:
                _sql(plan.pg_socket, port, "SELECT pg_switch_wal()")
                time.sleep(3)
                asyncio.run(lagging())
                v = br.view()
                if v["offsite_behind_segments"] == 0 and v["wal_waiting_segments"] == 0:
                    break  # (in the offsite archive, and nothing left waiting in pg_wal)
                assert time.monotonic() < deadline, br.view()
            assert _sql(plan.pg_socket, port, "SELECT count(*) FROM t0") == "1000"
            print(f"store back: offsite caught up, {br.view()['wal_waiting_segments']} waiting")

            # the spoke lost: its server and local repository gone, the offsite repository
            # (encrypted, the passphrase from the agent) restores every table, to the latest WAL
            from dvpnd.postgres.pgbr_restore import restore

            _sql(plan.pg_socket, port, "CREATE TABLE last AS SELECT 1 AS x")
            _sql(plan.pg_socket, port, "SELECT pg_switch_wal()")
            _run([*base_argv(plan), "check"])  # (archived to both)
            # then a writer commits a row every 20 ms, each acknowledged (a NOTICE after its
            # COMMIT, with the time), until the server is killed mid-stream: the commits lost are
            # those acknowledged but not in the restored copy
            _sql(plan.pg_socket, port, "CREATE TABLE ticks (n int PRIMARY KEY, at float8)")
            _sql(plan.pg_socket, port, "CREATE PROCEDURE tick(k int) LANGUAGE plpgsql AS $$ DECLARE t float8; "
                 "BEGIN FOR i IN 1..k LOOP t := extract(epoch FROM clock_timestamp()); "
                 "INSERT INTO ticks VALUES (i, t); COMMIT; RAISE NOTICE 'committed % %', i, t; "
                 "PERFORM pg_sleep(0.02); END LOOP; END $$")
            writer = subprocess.Popen(_as_postgres([str(BIN / "psql"), "-X", "-h", str(plan.pg_socket), "-p", str(port),
                                                    "-U", "postgres", "-d", "postgres", "-c", "CALL tick(100000)"]),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(3 * plan.archive_timeout + 1)
            _run([str(BIN / "pg_ctl"), "-D", str(plan.pg_path), "-w", "-m", "immediate", "stop"])
            running = None
            _, notices = writer.communicate(timeout=60)
            acked = {int(m[0]): float(m[1]) for m in re.findall(r"committed (\d+) ([0-9.]+)", notices)}
            assert len(acked) > 100, notices[-500:]
            shutil.rmtree(plan.pg_path)
            shutil.rmtree(home / "pgbr" / "repo")
            out = restore(config, home / "restored", "latest", "offsite")
            assert "restored the offsite repository to latest" in out[0]
            rport = port + 1
            _run([str(BIN / "pg_ctl"), "-D", str(home / "restored"), "-w", "-t", "120", "-l",
                  str(home / "logs" / "restored.log"), "-o", f"-c port={rport}", "start"])
            running = home / "restored"
            deadline = time.monotonic() + 60
            while _sql(plan.pg_socket, rport, "SELECT pg_is_in_recovery()") != "f":
                assert time.monotonic() < deadline, (home / "logs" / "restored.log").read_text()[-2000:]
                time.sleep(0.5)
            assert [_sql(plan.pg_socket, rport, f"SELECT count(*) FROM {t}") for t in ("t0", "t1", "t2", "last")] \
                == ["1000", "1000", "1000", "1"]
            assert _sql(plan.pg_socket, rport, "SHOW archive_mode") == "off"
            kept = int(_sql(plan.pg_socket, rport, "SELECT coalesce(max(n), 0) FROM ticks"))
            assert _sql(plan.pg_socket, rport, "SELECT count(*) FROM ticks") == str(kept)  # (no gap)
            top = max(acked)
            lost_s = acked[top] - acked[kept] if kept else acked[top] - min(acked.values())
            print(f"spoke lost mid-write: {top} commits acknowledged, {kept} restored from offsite: "
                  f"{top - kept} lost, {lost_s:.1f} s of writes (archive_timeout {plan.archive_timeout} s)")
            assert kept > 0 and lost_s <= plan.archive_timeout + 10, (top, kept, lost_s)
    finally:
        if running is not None:
            subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(running), "-w", "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
        _remove(home)


# --- faults: a store that checks credentials, a wrong passphrase, a full disk, a backup killed -

S3CALL = """
import json, sys
import boto3
import botocore.exceptions
from botocore.config import Config
port, ca, key, secret, op, bucket, name = sys.argv[1:8]
s3 = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{port}", verify=ca, region_name="us-east-1",
                  aws_access_key_id=key, aws_secret_access_key=secret, config=Config(s3={"addressing_style": "path"}))
try:
    if op == "put":
        out = s3.put_object(Bucket=bucket, Key=name, Body=b"canary")["VersionId"]
    elif op == "delete":
        out = s3.delete_object(Bucket=bucket, Key=name).get("VersionId")
    elif op == "delete-version":
        out = s3.delete_object(Bucket=bucket, Key=name, VersionId=sys.argv[8]).get("VersionId")
    else:
        v = s3.list_object_versions(Bucket=bucket, Prefix=name)
        out = {"versions": [x["VersionId"] for x in v.get("Versions", [])],
               "markers": [x["VersionId"] for x in v.get("DeleteMarkers", [])]}
    print(json.dumps({"ok": out}))
except botocore.exceptions.ClientError as e:
    print(json.dumps({"error": e.response["Error"]["Code"]}))
"""


def _s3call(port: int, ca: Path, key: list[str], *args: str) -> dict[str, object]:
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([str(root / ".venv" / "bin" / "python"), "-c", S3CALL, str(port), str(ca), *key, *args],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null"))
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def _descendants(pid: int) -> list[int]:
    """The live processes below `pid` (this test's own children and theirs)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def test_wrong_credentials_a_missing_bucket_a_wrong_passphrase_a_full_disk_and_a_killed_backup_are_reported_and_never_counted_good() -> None:
    """Against moto checking every request (users=True), as dvpnd's BackRest runs them: each fault
    is an error in status (`problems`), no operation it spoiled counts as done, and the next
    one after the fault is gone succeeds. The spoke's key pair deletes only by delete marker."""
    import asyncio
    import signal

    from dvpnd.config.load import load_config
    from dvpnd.postgres.pgbr_supervisor import BackRest

    assert shutil.which("pgbackrest"), "pgbackrest is not installed (./dev installs Debian's)"
    home = _workdir("pgbr")
    repo = home / "pgbr" / "repo"
    running: Path | None = None
    mounted = False
    try:
        with s3_stand_in(home, users=True) as (s3_port, ca, _, keys):
            port = 55000 + (os.getpid() + 300) % 1000
            pw = home / "passphrase"
            pw.write_text("the test's own passphrase, 2026\n")
            pw.chmod(0o600)

            def backrest(name: str, key: list[str], bucket: str = "dvpn-offsite") -> BackRest:
                return BackRest(load_config(_config(home, port, s3_port, ca, key=(key[0], key[1]), bucket=bucket,
                                                    name=name, passphrase=f"passphrase_file: {pw}")), environ={})

            # the local repository on a file system of its own, to fill up below (unmounted at the end)
            repo.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192m,mode=0700", "dvpn-test-repo", str(repo)],
                           check=True, timeout=30)
            mounted = True

            async def main() -> None:
                nonlocal running
                # a wrong secret, then a bucket that does not exist: refused, said, not counted
                wrong = backrest("wrong-secret.yaml", [keys["writer"][0], "not-the-secret"])
                assert await wrong.prepare(), wrong.problem
                _run([str(BIN / "initdb"), "-D", str(home / "data"), "-A", "trust", "-U", "postgres", "--no-sync"])
                auto = home / "data" / "postgresql.auto.conf"
                auto.write_text(render_auto_conf(auto.read_text(), {
                    **archive_settings(wrong.plan), "listen_addresses": "", "unix_socket_directories": str(home / "sock"),
                    "port": str(port)}))
                _run([str(BIN / "pg_ctl"), "-D", str(home / "data"), "-w", "-l", str(home / "logs" / "data.log"),
                      "start"])
                running = home / "data"
                nobucket = backrest("no-bucket.yaml", keys["writer"], bucket="dvpn-nosuch")
                for br, what, code in ((wrong, "wrong secret", "refused the offsite key pair"),
                                       (nobucket, "missing bucket", "NoSuchBucket")):
                    assert await br.prepare(), br.problem
                    assert not await br.run("stanza-create")
                    print(f"\n{what}: {br.problems()}")
                    assert any(code in p for p in br.problems()), br.problems()
                    assert "stanza-create" not in br.last_ok
                    assert any(p.startswith("pgBackRest stanza-create failed: ") for p in br.problems()), br.problems()
                    assert not await br.run("backup-full")
                    assert "backup-full" not in br.last_ok
                # the right ones
                br = backrest("dvpnd.yaml", keys["writer"])
                assert await br.prepare(), br.problem
                for op in ("stanza-create", "backup-full"):
                    assert await br.run(op), br.errors
                # (the failed runs' local backups are real ones: pgBackRest did them before the store refused)
                local = br.repos[1].backups
                assert br.repos[2].backups == 1 and local >= 1 and br.problems() == [], br.view()

                # the spoke's key pair: a delete leaves the object's version (a marker hides it),
                # and the version itself it cannot delete; the bucket's admin, off the spoke, can
                canary = "supervised/backup/lab/canary"
                version = str(_s3call(s3_port, ca, keys["writer"], "put", "dvpn-offsite", canary)["ok"])
                assert "ok" in _s3call(s3_port, ca, keys["writer"], "delete", "dvpn-offsite", canary)
                assert _s3call(s3_port, ca, keys["writer"], "delete-version", "dvpn-offsite", canary, version) \
                    == {"error": "AccessDenied"}
                left = _s3call(s3_port, ca, keys["admin"], "versions", "dvpn-offsite", canary)["ok"]
                assert version in left["versions"] and left["markers"], left  # type: ignore[index]

                # a wrong passphrase: the offsite repository cannot be read, and says so
                pw.write_text("not the passphrase the stanza was made with\n")
                assert await br.prepare(), br.problem
                assert not await br.run("check")
                await br.refresh()
                print(f"wrong passphrase: {br.problems()}")
                assert any(p.startswith("pgBackRest check failed: ") and "wrong cipher passphrase" in p
                           for p in br.problems()), br.problems()
                pw.write_text("the test's own passphrase, 2026\n")
                assert await br.prepare(), br.problem
                assert await br.run("check"), br.errors

                # a full local disk: the backup fails there, says why, is not counted
                _sql(home / "sock", port, "CREATE TABLE big AS SELECT g, md5(g::text) || md5((-g)::text) AS v "
                     "FROM generate_series(1, 600000) g")
                ballast = repo / "ballast"
                with open(ballast, "wb") as f:
                    with contextlib.suppress(OSError):
                        while True:
                            f.write(b"\0" * (1 << 20))
                newest = {k: br.repos[k].last_full for k in (1, 2)}
                assert not await br.run("backup-full")
                print(f"full disk: {br.problems()}")
                assert "backup-full" in br.errors and any(
                    p.startswith(f"local repository {repo}: its file system has 0 MiB free") for p in br.problems())
                assert any(p.startswith("WAL archiving fails: ") and "No space left on device" in p
                           for p in br.problems()), br.problems()
                # (the offsite one went on; pgBackRest keeps keep_full of them: compare the newest)
                assert br.repos[1].last_full == newest[1] and br.repos[2].last_full > newest[2], br.view()  # type: ignore[operator]
                newest = {k: br.repos[k].last_full for k in (1, 2)}
                ballast.unlink()

                # a backup killed midway (kill -9 of pgBackRest in the offsite repository's run)
                task = asyncio.create_task(br.run("backup-full"))
                deadline, killed = time.monotonic() + 120, None
                while killed is None:
                    assert time.monotonic() < deadline and not task.done(), "no backup to kill"
                    for pid in _descendants(os.getpid()):
                        a = _argv(pid)
                        if "--repo=2" in a and a[-1] == "backup":
                            await asyncio.sleep(0.5)
                            os.kill(pid, signal.SIGKILL)
                            killed = pid
                            break
                    await asyncio.sleep(0.05)
                assert not await task
                print(f"killed: {br.errors.get('backup-full')}")
                assert "killed by signal 9" in br.errors["backup-full"] and br.repos[2].last_full == newest[2], br.view()
                assert br.repos[1].last_full > newest[1], br.view()  # type: ignore[operator]  # (done before the kill)
                # the next one succeeds, in both
                assert await br.run("backup-full"), br.errors
                assert br.repos[2].last_full > newest[2] and "backup-full" not in br.errors, br.view()  # type: ignore[operator]

            asyncio.run(main())
    finally:
        if running is not None:
            subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(running), "-w", "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
        if mounted:
            _remove(home / "pgbr")
            subprocess.run(["umount", str(repo)], check=False, timeout=60)
        _remove(home)


# --- a replica promoted takes over the stanza ----------------------------------------------------

def test_a_promoted_replica_takes_over_the_shared_offsite_stanza_and_the_old_primary_stops() -> None:
    """Spoke a is primary, spoke b its streaming replica (both PostgreSQL 15 on Unix sockets),
    each with dvpnd's BackRest: one local repository each, one offsite stanza shared. Only the
    primary's schedule runs anything. Spoke a is lost; b is promoted: b's schedule creates its
    local repository, backs up into both, and archives the new timeline into the same offsite
    stanza, from which a restore reaches rows written after the promotion. Spoke a's schedule,
    not primary, runs nothing (one writer per stanza)."""
    import asyncio

    from dvpnd.config.load import load_config
    from dvpnd.postgres.pgbr_restore import restore
    from dvpnd.postgres.pgbr_status import next_op
    from dvpnd.postgres.pgbr_supervisor import BackRest

    assert shutil.which("pgbackrest"), "pgbackrest is not installed (./dev installs Debian's)"
    home = _workdir("a", "a/sock", "b", "b/sock")
    running: list[Path] = []
    try:
        with s3_stand_in(home) as (s3_port, ca, _, _):
            pw = home / "passphrase"
            pw.write_text("one passphrase for the cluster's stanza\n")
            pw.chmod(0o600)
            ports = {n: 55000 + (os.getpid() + k) % 1000 for n, k in (("a", 100), ("b", 150))}
            brs = {n: BackRest(load_config(_config(home, ports[n], s3_port, ca, name=f"{n}.yaml", node=n,
                                                   passphrase=f"passphrase_file: {pw}")), environ={})
                   for n in ("a", "b")}

            def sql(n: str, q: str) -> str:
                return _sql(home / n / "sock", ports[n], q)

            def due(n: str) -> str | None:
                br = brs[n]
                return next_op(br.cfg, time.time(), sql(n, "SELECT pg_is_in_recovery()") == "f", br.last_ok,
                               br.last_fail)

            def start(n: str) -> None:
                auto = home / n / "data" / "postgresql.auto.conf"
                auto.write_text(render_auto_conf(auto.read_text(), {
                    **archive_settings(brs[n].plan), "listen_addresses": "",
                    "unix_socket_directories": str(home / n / "sock"), "port": str(ports[n])}))
                _run([str(BIN / "pg_ctl"), "-D", str(home / n / "data"), "-w", "-l", str(home / n / "server.log"),
                      "start"])
                running.append(home / n / "data")

            async def schedule(n: str) -> list[str]:
                """What dvpnd's loop would run now, until nothing but check/verify/drill is due."""
                ran = []
                while (op := due(n)) in ("stanza-create", "backup-full", "backup-diff"):
                    assert await brs[n].run(op), (n, op, brs[n].errors)
                    ran.append(op)
                return ran

            async def main() -> None:
                for br in brs.values():
                    assert await br.prepare(), br.problem
                _run([str(BIN / "initdb"), "-D", str(home / "a" / "data"), "-A", "trust", "-U", "postgres",
                      "--no-sync"])
                start("a")
                assert await schedule("a") == ["stanza-create", "backup-full"]
                sql("a", "CREATE TABLE before AS SELECT g FROM generate_series(1, 500) g")
                _run([str(BIN / "pg_basebackup"), "-D", str(home / "b" / "data"), "-h", str(home / "a" / "sock"),
                      "-p", str(ports["a"]), "-U", "postgres", "-R", "-X", "stream", "--no-sync"])
                start("b")
                deadline = time.monotonic() + 60
                while sql("b", "SELECT count(*) FROM pg_stat_wal_receiver") != "1":
                    assert time.monotonic() < deadline, (home / "b" / "server.log").read_text()[-2000:]
                    await asyncio.sleep(0.3)
                assert due("b") is None  # a replica's schedule runs nothing

                # spoke a lost; spoke b promoted (the runbook's `dvpnctl pg promote` does this)
                _run([str(BIN / "pg_ctl"), "-D", str(home / "a" / "data"), "-w", "-m", "immediate", "stop"])
                running.remove(home / "a" / "data")
                _run([str(BIN / "pg_ctl"), "-D", str(home / "b" / "data"), "-w", "promote"])
                assert sql("b", "SELECT pg_is_in_recovery()") == "f"
                assert await schedule("b") == ["stanza-create", "backup-full"]
                sql("b", "CREATE TABLE after AS SELECT g FROM generate_series(1, 700) g")
                sql("b", "SELECT pg_switch_wal()")
                assert await brs["b"].run("check"), brs["b"].errors  # (archived to both of b's repositories)
                await brs["b"].refresh()
                offsite = brs["b"].repos[2]
                assert offsite.ok and offsite.backups == 2 and str(offsite.wal_max).startswith("00000002"), offsite
                print(f"\nafter the promotion: offsite {offsite.backups} backups, newest WAL {offsite.wal_max}; "
                      f"b local {brs['b'].repos[1].backups}")
                # the old primary back as the runbook makes it, a replica of b: its schedule runs
                # nothing, its server archives nothing (archive_mode on archives on a primary only)
                shutil.rmtree(home / "a" / "data")
                _run([str(BIN / "pg_basebackup"), "-D", str(home / "a" / "data"), "-h", str(home / "b" / "sock"),
                      "-p", str(ports["b"]), "-U", "postgres", "-R", "-X", "stream", "--no-sync"])
                start("a")
                sql("b", "CREATE TABLE later AS SELECT 1 AS x")
                sql("b", "SELECT pg_switch_wal()")
                deadline = time.monotonic() + 60
                while sql("a", "SELECT count(*) FROM pg_class WHERE relname = 'later'") != "1":
                    assert time.monotonic() < deadline, (home / "a" / "server.log").read_text()[-2000:]
                    await asyncio.sleep(0.3)
                assert sql("a", "SELECT pg_is_in_recovery()") == "t" and due("a") is None
                assert sql("a", "SELECT archived_count FROM pg_stat_archiver") == "0"

            asyncio.run(main())
            # the shared offsite stanza restores to the new timeline's latest
            out = restore(brs["b"].config, home / "restored", "latest", "offsite")
            assert "restored the offsite repository to latest" in out[0]
            rport = ports["b"] + 1
            _run([str(BIN / "pg_ctl"), "-D", str(home / "restored"), "-w", "-t", "120", "-l",
                  str(home / "b" / "restored.log"), "-o", f"-c port={rport}", "start"])
            running.append(home / "restored")
            deadline = time.monotonic() + 60
            while _sql(home / "b" / "sock", rport, "SELECT pg_is_in_recovery()") != "f":
                assert time.monotonic() < deadline, (home / "b" / "restored.log").read_text()[-2000:]
                time.sleep(0.5)
            assert [_sql(home / "b" / "sock", rport, f"SELECT count(*) FROM {t}") for t in ("before", "after")] \
                == ["500", "700"]
    finally:
        for d in reversed(running):
            subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(d), "-w", "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
        _remove(home)
