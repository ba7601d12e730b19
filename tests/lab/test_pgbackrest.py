"""pgBackRest's configuration as dvpnd renders it (dvpnd/postgres/pgbackrest.py) driving the real
pgBackRest 2.45 against a real PostgreSQL 15 (as root: the server and pgBackRest run as the
postgres user, on a Unix socket only): a full backup into the local repository, WAL archived
asynchronously by the server's archive_command, and a point-in-time restore that brings a
dropped table back with every row, with archiving off in the copy; and an encrypted offsite
repository on an S3 API (moto's standalone server from PyPI, the only S3 server these machines
can install, behind Debian's stunnel with a CA of the test's own) whose objects hold no
plaintext, where the unencrypted local repository does."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dvpnd.postgres.conf import render_auto_conf
from dvpnd.postgres.pgbackrest import (
    S3,
    Plan,
    Repo,
    archive_settings,
    backup_argv,
    base_argv,
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
        _run([str(BIN / "pg_ctl"), "-D", str(p.pg_path), "-w", "-m", "fast", "stop"])
        pids.remove(p.pg_path)

        restored = home / "restored"
        _run(restore_argv(p, restored, target, 1), timeout=300)
        rauto = restored / "postgresql.auto.conf"
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

S3_NAME = "s3.dvpn.test"  # the endpoint's name (in the certificate); pgBackRest connects to 127.0.0.1


def _tls_pair(d: Path) -> tuple[Path, Path, Path]:
    """A test CA, and a certificate for s3.dvpn.test it signed: (ca.pem, cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dvpn test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, S3_NAME)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            # pgBackRest 2.45 matches the host it connects to against the names as text, IP
            # SANs aside: 127.0.0.1 as a DNS name for it, as an IP address for Python's client
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(S3_NAME), x509.DNSName("127.0.0.1"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = (d / "ca.pem", d / "cert.pem", d / "key.pem")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def _s3(port: int, ca: Path, method: str, path: str) -> bytes:
    import ssl
    import urllib.request

    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(ca)), timeout=30) as r:
        return bytes(r.read())


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
def s3_stand_in(home: Path) -> Iterator[tuple[int, Path, Callable[[bool], None]]]:
    """moto's server on plain HTTP behind Debian's stunnel, which holds a certificate of the
    test's own CA (the development server moto runs closes TLS without a close_notify, which
    OpenSSL 3 in pgBackRest takes for a truncated answer), with the bucket dvpn-offsite made.
    The stand-in is told that S3_NAME is an S3 endpoint, as a real store knows its own name.
    Yields (the TLS port, the CA file, reachable(on)): reachable(False) stops stunnel (the store
    unreachable; moto keeps its data), reachable(True) starts it again."""
    root = Path(__file__).resolve().parents[2]
    moto = root / ".venv" / "bin" / "moto_server"
    if not moto.exists():
        pytest.skip(f"{moto} missing: ./dev test makes the venv with the test extras (moto)")
    u = pwd.getpwnam("postgres")
    (home / "tls").mkdir(exist_ok=True)
    ca, cert, key = _tls_pair(home / "tls")
    for f in (ca, cert, key):
        os.chown(f, u.pw_uid, u.pw_gid)
    s3_port, moto_port = 56000 + os.getpid() % 1000, 57000 + os.getpid() % 1000
    (home / "tls" / "stunnel.conf").write_text(
        f"foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:{s3_port}\nconnect = 127.0.0.1:{moto_port}\n"
        f"cert = {cert}\nkey = {key}\n")
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def reachable(on: bool) -> None:
        old = procs.pop("tunnel", None)
        if old is not None:
            old.terminate()
            old.wait(timeout=30)
        if on:
            with open(home / "tls" / "stunnel.log", "ab") as log:
                procs["tunnel"] = subprocess.Popen(["stunnel", str(home / "tls" / "stunnel.conf")],
                                                   stdout=subprocess.DEVNULL, stderr=log)
            deadline = time.monotonic() + 30
            while True:
                try:
                    _s3(s3_port, ca, "HEAD", "/dvpn-offsite")
                    return
                except urllib.error.HTTPError:
                    return  # (it answers: the bucket is made below)
                except OSError:
                    assert time.monotonic() < deadline and procs["moto"].poll() is None, \
                        f"moto_server or stunnel did not come up: {(home / 'tls' / 'stunnel.log').read_text()[-1500:]}"
                    time.sleep(0.3)

    try:
        procs["moto"] = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(moto_port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         env=dict(os.environ, MOTO_S3_CUSTOM_ENDPOINTS=f"https://{S3_NAME}"))
        reachable(True)
        _s3(s3_port, ca, "PUT", "/dvpn-offsite")
        yield s3_port, ca, reachable
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)


def test_the_offsite_bucket_holds_no_plaintext_and_the_local_repository_does() -> None:
    root = Path(__file__).resolve().parents[2]
    assert shutil.which("pgbackrest"), "pgbackrest is not installed (./dev installs Debian's)"
    home = _workdir()
    running: Path | None = None
    try:
        with s3_stand_in(home) as (s3_port, ca, _):
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


# --- dvpnd supervising pgBackRest (backup.tool: pgbackrest) -----------------------------------
# The config is dvpnd's own YAML through its loader; dvpnd's BackRest writes pgBackRest's home
# and runs every operation through its runner as the postgres user (runner: direct, as in the
# lab and containers). The passphrase comes from a stand-in for Dstack's guest agent: a small
# aiohttp server on a Unix socket answering the documented POST /GetKey (the real agent runs
# only inside a Dstack CVM).

def _config(home: Path, port: int, s3_port: int, ca: Path) -> Path:
    from tests.test_config import SPOKE

    creds = home / "offsite.env"
    creds.write_text("AWS_ACCESS_KEY_ID=AKIATEST\nAWS_SECRET_ACCESS_KEY=test-secret\n")
    creds.chmod(0o600)
    text = SPOKE + f"""\
postgres:
  primary: 10.88.0.11
  data_dir: {home / "data"}
  socket_dir: {home / "sock"}
  port: {port}
backup:
  tool: pgbackrest
  pgbackrest:
    home: {home / "pgbr"}
    stanza: lab
    archive_timeout: 5
    runner: direct
    offsite:
      endpoint: {S3_NAME}
      host: 127.0.0.1
      port: {s3_port}
      bucket: dvpn-offsite
      region: us-east-1
      uri_style: path
      path: /supervised
      ca_file: {ca}
      credentials_file: {creds}
      passphrase: dstack
      dstack_socket: {home / "dstack.sock"}
"""
    (home / "dvpnd.yaml").write_text(text)
    return home / "dvpnd.yaml"


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
        with s3_stand_in(home) as (s3_port, ca, reachable):
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
            _run([str(BIN / "pg_ctl"), "-D", str(plan.pg_path), "-w", "-m", "immediate", "stop"])
            running = None
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
    finally:
        if running is not None:
            subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(running), "-w", "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
        _remove(home)
