"""Backup duration: dvpnd's verified backup path vs plain pg_basebackup, same database, same run.

A throwaway PostgreSQL 15 cluster (socket only, no TCP listener) is filled with pgbench
(scale 50, about 750 MB; --quick: scale 5). Runs alternate between plain `pg_basebackup`
with the same options dvpnd uses (tar, client-side gzip level 1, WAL streamed, fast
checkpoint) and dvpnd's `take_backup`, the function its scheduler and `dvpnctl backup now`
run. dvpnd's figure is its pg_basebackup plus its own work (space check, fsync of every
file, rename, retention bookkeeping) without verification, which is reported separately.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

from bench.stats import Figure
from dvpnd.util.procutil import wait_exit

BIN = Path("/usr/lib/postgresql/15/bin")
WORK = Path("/var/tmp/dvpn-bench-pg")


def _as_postgres(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


def _config(sock: Path, data: Path, backups: Path) -> Path:
    cfg = WORK / "dvpnd.yaml"
    cfg.write_text(f"""\
role: spoke
name: bench
state_dir: {WORK / 'state'}
overlay: {{address: 10.88.0.11}}
hub: {{public_key: Pz2bp3hT4R0pt40UA0jT0rfnpbqLkDHIkVLazU5vAW4=, endpoint: 192.0.2.10:51820}}
postgres: {{primary: 10.88.0.11, data_dir: {data}, socket_dir: {sock}}}
backup: {{dir: {backups}, keep_last: 1000}}
""")
    return cfg


def run(quick: bool) -> list[Figure]:
    if not (BIN / "pgbench").exists():
        return [Figure("backup of a pgbench database", "s", [], note="postgresql-15 not installed: skipped")]
    from dvpnd.config.load import load_config
    from dvpnd.postgres import backup

    scale, repeat = (5, 2) if quick else (50, 3)
    shutil.rmtree(WORK, ignore_errors=True)
    data, sock, plain_dir, backups = WORK / "data", WORK / "run", WORK / "plain", WORK / "backups"
    for d in (WORK, sock, plain_dir):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.chown(WORK, "postgres", "postgres")
    shutil.chown(sock, "postgres", "postgres")
    server = None
    try:
        subprocess.run(_as_postgres([str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                                     "-E", "UTF8", "--locale=C.UTF-8"]), check=True, capture_output=True)
        server = subprocess.Popen(_as_postgres([
            str(BIN / "postgres"), "-D", str(data), "-c", "listen_addresses=", "-c", f"unix_socket_directories={sock}",
            "-c", "max_wal_size=4GB", "-c", "checkpoint_timeout=30min"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while subprocess.run([str(BIN / "pg_isready"), "-q", "-h", str(sock)]).returncode != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the benchmark's PostgreSQL did not start")
            time.sleep(0.2)
        t0 = time.monotonic()
        subprocess.run([str(BIN / "pgbench"), "-i", "-q", "-s", str(scale), "-h", str(sock), "-U", "postgres",
                        "postgres"], check=True, capture_output=True)
        fill = time.monotonic() - t0
        size = int(subprocess.run([str(BIN / "psql"), "-h", str(sock), "-U", "postgres", "-XAtc",
                                   "SELECT pg_database_size('postgres')"], capture_output=True, text=True,
                                  check=True).stdout)
        config = load_config(_config(sock, data, backups))
        plain_times: list[float] = []
        dvpn_times: list[float] = []
        verify_times: list[float] = []
        sizes: list[int] = []
        for i in range(repeat):
            out = plain_dir / f"run{i}"
            t0 = time.monotonic()
            subprocess.run([str(BIN / "pg_basebackup"), "-D", str(out), "-Ft", "--compress=client-gzip:1",
                            "-X", "stream", "-c", "fast", "--manifest-checksums=CRC32C", "-h", str(sock),
                            "-U", "postgres", "--no-password"], check=True, capture_output=True)
            plain_times.append(time.monotonic() - t0)
            shutil.rmtree(out)
            t0 = time.monotonic()
            entry = asyncio.run(backup.take_backup(config, "primary", lambda: size))
            total = time.monotonic() - t0
            dvpn_times.append(total - entry.verify_sec)
            verify_times.append(entry.verify_sec)
            sizes.append(entry.size_bytes)
            time.sleep(1.1)  # backups are named by the second
        mb = size / 1e6
        return [
            Figure(f"backup, pgbench scale {scale} ({mb:.0f} MB), without verification", "s", dvpn_times,
                   anchor_name="pg_basebackup, same options", anchor=plain_times, goal="≤ 1.05×",
                   met=statistics.median(dvpn_times) / statistics.median(plain_times) <= 1.05,
                   note=f"{repeat} alternating runs; {backup.human(sizes[-1])} compressed; "
                        f"pgbench -i took {fill:.0f}s"),
            Figure(f"verification of that backup (unpack + pg_verifybackup), scale {scale}", "s", verify_times,
                   note="reported separately; not part of the goal"),
        ]
    finally:
        if server is not None and server.poll() is None:
            wait_exit(server.pid, 60, (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL))
        shutil.rmtree(WORK, ignore_errors=True)
