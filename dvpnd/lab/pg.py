"""The lab's PostgreSQL 15 cluster: spoke-a the primary, the other spokes streaming replicas
that copy it over the overlay, each server in its spoke's network namespace listening on the
overlay address, run as the postgres user, and set up with the same `dvpnctl pg` runbook
steps an operator uses. The lab starts the servers (a real spoke has its own service manager).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dvpnd.config.load import load_config
from dvpnd.config.model import Config, PostgresConfig
from dvpnd.errors import DvpnError
from dvpnd.lab.node import LAB_DIR, Node, node_argv, node_env, pid_alive, run_in, wait_until
from dvpnd.lab.s3 import BUCKET, S3_NAME
from dvpnd.postgres.server import as_user, scram_verifier, server_user
from dvpnd.postgres.state import connect
from dvpnd.util.fsutil import write_atomic
from dvpnd.util.procutil import wait_exit

APP_USER = "app"
APP_DB = "app"
S3_DIR = LAB_DIR / "s3"
S3_PORT = 443


# --- the offsite store: the S3 stand-in in the outside namespace ------------------------------

def _moto_python() -> Path | None:
    """A Python with moto and boto3 (the S3 stand-in's, from PyPI): DVPN_S3_PYTHON, this one, or
    the checkout's .venv (./dev setup makes it); None if there is none."""
    here = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"
    for cand in (os.environ.get("DVPN_S3_PYTHON"), sys.executable, str(here)):
        if cand and Path(cand).exists() and subprocess.run([cand, "-c", "import moto, boto3"],
                                                           capture_output=True).returncode == 0:
            return Path(cand)
    return None


def s3_pid() -> int | None:
    try:
        pid = int((S3_DIR / "s3.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, b"dvpnd.lab.s3") else None


def s3_up(outside: Node) -> dict[str, Any] | None:
    """Start the S3 stand-in (dvpnd.lab.s3: moto behind stunnel, signatures and policies checked)
    on the outside namespace's address, port 443, unless it runs; make the offsite secrets the
    spokes share (the writer's key pair, a cipher passphrase). The offsite settings for the
    spokes' config, or None where moto is not installed (the lab then backs up locally only)."""
    python = _moto_python()
    if python is None:
        return None
    S3_DIR.mkdir(mode=0o755, exist_ok=True)
    os.chmod(S3_DIR, 0o755)  # (the postgres user reads the CA under it)
    if s3_pid() is None:
        for name in ("keys.json", "ca.pem"):
            (S3_DIR / name).unlink(missing_ok=True)
        log = open(S3_DIR / "s3.log", "ab")
        argv = [sys.executable, "-m", "dvpnd.lab.s3", "--dir", str(S3_DIR), "--python", str(python), "--users",
                "--listen", str(outside.public_ip), "--port", str(S3_PORT), "--name", S3_NAME,
                "--name", str(outside.public_ip)]
        env = dict(node_env(outside), PYTHONPATH=str(Path(__file__).resolve().parents[2]))  # (this dvpnd)
        proc = subprocess.Popen(node_argv(outside, argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=env, start_new_session=True, cwd="/")
        log.close()
        (S3_DIR / "s3.pid").write_text(str(proc.pid))

        def serving() -> bool:
            if s3_pid() is None:
                raise DvpnError(f"the S3 stand-in exited: {(S3_DIR / 's3.log').read_text()[-800:]}")
            return (S3_DIR / "keys.json").exists() and (S3_DIR / "ca.pem").exists()

        wait_until(serving, 60, 0.3, lambda: f"the S3 stand-in did not come up; see {S3_DIR / 's3.log'}")
    creds, passphrase = LAB_DIR / "offsite.env", LAB_DIR / "offsite.passphrase"
    writer = json.loads((S3_DIR / "keys.json").read_text())["writer"]
    write_atomic(creds, f"AWS_ACCESS_KEY_ID={writer[0]}\nAWS_SECRET_ACCESS_KEY={writer[1]}\n".encode(), mode=0o600)
    if not passphrase.exists():
        write_atomic(passphrase, (secrets.token_urlsafe(36) + "\n").encode(), mode=0o600)
    return {"endpoint": S3_NAME, "host": str(outside.public_ip), "port": S3_PORT, "bucket": BUCKET,
            "ca_file": str(S3_DIR / "ca.pem"), "credentials_file": str(creds), "passphrase_file": str(passphrase)}


def s3_down() -> list[str]:
    """Stop the stand-in by its recorded PID (it stops moto and stunnel); its group if it hangs."""
    pid = s3_pid()
    if pid is None:
        return []
    wait_exit(pid, 30, (signal.SIGTERM, None))
    if pid_alive(pid, b"dvpnd.lab.s3"):
        os.killpg(pid, signal.SIGKILL)
        wait_exit(pid, 5, (None,))
    return [f"stopped the S3 stand-in (pid {pid})"]


def node_config(node: Node) -> Config:
    assert node.config is not None
    return load_config(Path(node.config))


def _pg(node: Node) -> PostgresConfig:
    return node_config(node).postgres


def server_pid(node: Node) -> int | None:
    try:
        pid = int((Path(node.dir) / "postgres.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, b"postgres") else None


def start_server(node: Node) -> int:
    pg = _pg(node)
    log = open(Path(node.dir) / "postgres.log", "ab")
    argv = as_user(pg, [str(pg.bin_dir / "postgres"), "-D", str(pg.data_dir)])
    proc = subprocess.Popen(node_argv(node, argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            env=node_env(node), start_new_session=True, cwd="/")
    log.close()
    (Path(node.dir) / "postgres.pid").write_text(str(proc.pid))
    return proc.pid


def stop_server(node: Node, how: int = signal.SIGINT) -> list[str]:
    """Stop the node's server (SIGINT: PostgreSQL's fast shutdown), by the PID the lab recorded."""
    pid = server_pid(node)
    if pid is None:
        return []
    wait_exit(pid, 20, (how, signal.SIGQUIT, signal.SIGKILL))
    return [f"stopped postgres in {node.name} (pid {pid})"]


def psql(node: Node, sql: str, db: str = "postgres", check: bool = True) -> str:
    """Run SQL on the node's own server over its socket, as the postgres superuser."""
    pg = _pg(node)
    argv = as_user(pg, [str(pg.bin_dir / "psql"), "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "postgres",
                        "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
    return run_in(node, argv, check=check, timeout=120).stdout.strip()


def app_password() -> str:
    return (LAB_DIR / "app.password").read_text().strip()


def app_psql(node: Node, host: str, sql: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run SQL as the application user, from `node`, on the server at `host` (over the overlay)."""
    pg = _pg(node)
    argv = [str(pg.bin_dir / "psql"), f"host={host} port={pg.port} user={APP_USER} dbname={APP_DB} "
            "connect_timeout=5 sslmode=disable", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]
    return run_in(node, argv, env={"PGPASSWORD": app_password()}, check=check, timeout=30)


def dvpnctl(node: Node, *args: str) -> str:
    assert node.config is not None
    return run_in(node, [sys.executable, "-m", "dvpnd.cli", *args, "--config", node.config], timeout=600).stdout


def wait_server(node: Node, timeout: float = 60) -> None:
    pg = _pg(node)

    def accepting() -> bool:
        r = run_in(node, [str(pg.bin_dir / "pg_isready"), "-q", "-h", str(pg.socket_dir), "-p", str(pg.port)],
                   check=False, timeout=120)
        if r.returncode != 0 and server_pid(node) is None:
            raise DvpnError(f"{node.name}: postgres exited; see {Path(node.dir) / 'postgres.log'}")
        return r.returncode == 0

    wait_until(accepting, timeout, 0.3, lambda: f"{node.name}: postgres not accepting connections after {timeout:.0f}s")


def _prepare_dirs(node: Node, password: str) -> None:
    pg = _pg(node)
    u = server_user(pg)
    for d in (pg.data_dir.parent, pg.socket_dir):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(d, u.pw_uid, u.pw_gid)
    if not pg.password_file.exists():
        write_atomic(pg.password_file, (password + "\n").encode(), mode=0o600)


def wait_streaming(primary: Node, replicas: int, timeout: float = 60) -> None:
    n = ["0"]

    def streaming() -> bool:
        n[0] = psql(primary, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", check=False)
        return n[0] == str(replicas)

    wait_until(streaming, timeout, 0.3,
               lambda: f"{primary.name}: {n[0] or 0} of {replicas} replicas streaming after {timeout:.0f}s")


def up(nodes: list[Node]) -> None:
    """Bring the cluster up (or repair it): idempotent like the rest of `lab up`."""
    spokes = [n for n in nodes if n.role == "spoke"]
    primary, replicas = spokes[0], spokes[1:]
    secret = LAB_DIR / "pg-replication.password"
    if not secret.exists():
        write_atomic(secret, (secrets.token_urlsafe(32) + "\n").encode(), mode=0o600)
    if not (LAB_DIR / "app.password").exists():
        write_atomic(LAB_DIR / "app.password", (secrets.token_urlsafe(16) + "\n").encode(), mode=0o600)
    for s in spokes:
        _prepare_dirs(s, secret.read_text().strip())

    # The primary: the operator's `dvpnctl pg setup` (initdb, dvpn's files), start, setup again (role).
    pg = _pg(primary)
    if not (pg.data_dir / "PG_VERSION").exists():
        dvpnctl(primary, "pg", "setup")
    if server_pid(primary) is None:
        start_server(primary)
    wait_server(primary)
    dvpnctl(primary, "pg", "setup")
    if psql(primary, f"SELECT 1 FROM pg_roles WHERE rolname = '{APP_USER}'") != "1":
        with connect(_pg(primary)) as conn:
            verifier = scram_verifier(conn, APP_USER, app_password())
        psql(primary, f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{verifier}'")
        psql(primary, f"CREATE DATABASE {APP_DB} OWNER {APP_USER}")
    # The replicas: `dvpnctl pg init-replica` copies the primary over the overlay.
    for r in replicas:
        if not (_pg(r).data_dir / "PG_VERSION").exists():
            dvpnctl(r, "pg", "init-replica")
        if server_pid(r) is None:
            start_server(r)
        wait_server(r)
    if replicas and psql(primary, "SELECT pg_is_in_recovery()") == "f":
        wait_streaming(primary, len(replicas))
    wait_reported(spokes)
    wait_backed_up(primary)


def wait_backed_up(primary: Node, timeout: float = 180) -> None:
    """Until the primary's dvpnd has its first full backup in every repository (stanza, a full
    backup locally and offsite: half a minute), so the lab comes up healthy."""
    from dvpnd.serve import control

    last: list[Any] = [None]

    def done() -> bool:
        b = control.request(Path(primary.dir) / "control.sock", "status").get("status", {}).get("backup") or {}
        last[0] = b.get("problems") or b.get("repos")
        repos = b.get("repos") or []
        return bool(repos) and all(r.get("backups") for r in repos) and not b.get("problems")

    wait_until(done, timeout, 1.0, lambda: f"{primary.name}: no first backup after {timeout:.0f}s: {last[0]}")


def wait_reported(spokes: list[Node], timeout: float = 20) -> None:
    """Until every spoke's status page shows its server up (dvpnd polls every few seconds)."""
    import json

    waiting = [s.name for s in spokes]

    def reported() -> bool:
        waiting.clear()
        for s in spokes:
            assert s.status_url is not None
            r = run_in(s, ["curl", "-s", "--max-time", "5", s.status_url], check=False, timeout=120)
            try:
                role = (json.loads(r.stdout).get("postgres") or {}).get("role")
            except ValueError:
                role = None
            if role not in ("primary", "replica"):
                waiting.append(s.name)
        return not waiting

    wait_until(reported, timeout, 0.5,
               lambda: f"dvpnd does not see PostgreSQL up on {', '.join(waiting)} after {timeout:.0f}s")


def demo(nodes: list[Node]) -> list[str]:
    """A row written on the primary through the overlay, read back on every replica."""
    spokes = [n for n in nodes if n.role == "spoke"]
    primary, replicas = spokes[0], spokes[1:]
    client = replicas[0] if replicas else primary
    assert primary.overlay_ip is not None
    stamp = f"lab {time.time():.3f}"
    app_psql(client, primary.overlay_ip,
             f"CREATE TABLE IF NOT EXISTS lab_rows (id serial PRIMARY KEY, note text);"
             f"INSERT INTO lab_rows (note) VALUES ('{stamp}')")
    lines = [f"{client.name} wrote '{stamp}' on {primary.name} ({primary.overlay_ip}:5432) over the overlay"]
    for r in replicas:
        def replicated(r: Node = r) -> bool:
            return psql(r, f"SELECT count(*) FROM lab_rows WHERE note = '{stamp}'", db=APP_DB, check=False) == "1"

        try:
            wait_until(replicated, 10, 0.1, lambda: "not replicated")
            lines.append(f"{r.name} (replica): row replicated")
        except DvpnError:
            lines.append(f"{r.name} (replica): row NOT replicated")
    return lines
