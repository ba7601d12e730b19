"""Backups: pgBackRest through dvpnd's own path against plain pg_basebackup, same database,
same run.

A throwaway PostgreSQL 15 cluster (socket only, no TCP listener) is filled with pgbench
(scale 50, about 750 MB; --quick: scale 5). pgBackRest runs through dvpnd's BackRest
supervisor and its runner as postgres (the local repository only, lz4, 2 processes): a full
backup against `pg_basebackup -Ft -z` (what an operator would otherwise run), a differential
after small changes and after touching the large table (pgBackRest 2.45 copies a changed file
whole), a restore of the latest state, and the archiving lag (segments waiting) under pgbench
load.
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


def run(quick: bool) -> list[Figure]:
    if not (BIN / "pgbench").exists():
        return [Figure("backup of a pgbench database", "s", [], note="postgresql-15 not installed: skipped")]
    scale, repeat = (5, 2) if quick else (50, 3)
    shutil.rmtree(WORK, ignore_errors=True)
    data, sock = WORK / "data", WORK / "run"
    for d in (WORK, sock):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.chown(WORK, "postgres", "postgres")
    shutil.chown(sock, "postgres", "postgres")
    WORK.chmod(0o755)  # (pgBackRest's home lies inside: the runner, as postgres, must reach it)
    server = None
    try:
        subprocess.run(_as_postgres([str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                                     "-E", "UTF8", "--locale=C.UTF-8"]), check=True, capture_output=True)
        pgbr = _pgbr_config(sock, data)
        archive = [a for k, v in _archive_settings(pgbr).items() for a in ("-c", f"{k}={v}")]
        server = subprocess.Popen(_as_postgres([
            str(BIN / "postgres"), "-D", str(data), "-c", "listen_addresses=", "-c", f"unix_socket_directories={sock}",
            "-c", "max_wal_size=4GB", "-c", "checkpoint_timeout=30min", *archive]),
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
        return _pgbackrest_rows(pgbr, sock, repeat, scale, size / 1e6, fill)
    finally:
        if server is not None and server.poll() is None:
            wait_exit(server.pid, 60, (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL))
        shutil.rmtree(WORK, ignore_errors=True)


# --- pgBackRest ---------------------------------------------------------------------------------

def _pgbr_config(sock: Path, data: Path) -> Path:
    cfg = WORK / "dvpnd-pgbackrest.yaml"
    cfg.write_text(f"""\
role: spoke
name: bench
state_dir: {WORK / 'state'}
overlay: {{address: 10.88.0.11}}
hub: {{public_key: Pz2bp3hT4R0pt40UA0jT0rfnpbqLkDHIkVLazU5vAW4=, endpoint: 192.0.2.10:51820}}
postgres: {{primary: 10.88.0.11, data_dir: {data}, socket_dir: {sock}}}
backup: {{pgbackrest: {{home: {WORK / 'pgbr'}, stanza: bench, runner: direct, archive_timeout: 60}}}}
""")
    return cfg


def _archive_settings(cfg: Path) -> dict[str, str]:
    from dvpnd.config.load import load_config
    from dvpnd.postgres.pgbackrest import archive_settings, plan_for

    return archive_settings(plan_for(load_config(cfg)))


def _sql(sock: Path, sql: str) -> str:
    return subprocess.run([str(BIN / "psql"), "-h", str(sock), "-U", "postgres", "-XAtqc", sql], capture_output=True,
                          text=True, check=True).stdout.strip()


def _ready(data: Path) -> int:
    try:
        return sum(1 for p in (data / "pg_wal" / "archive_status").iterdir() if p.name.endswith(".ready"))
    except OSError:
        return 0


def _pgbackrest_rows(cfg_path: Path, sock: Path, repeat: int, scale: int, mb: float, fill: float) -> list[Figure]:
    if shutil.which("pgbackrest") is None:
        return [Figure("pgBackRest backups", "s", [], note="pgbackrest not installed: skipped")]
    from dvpnd.config.load import load_config
    from dvpnd.postgres import pgbr_restore
    from dvpnd.postgres.pgbr_supervisor import BackRest

    config = load_config(cfg_path)
    br = BackRest(config, environ={})

    async def run(op: str) -> float:
        t0 = time.monotonic()
        if not await br.run(op):
            raise RuntimeError(f"pgBackRest {op}: {br.errors.get(op)}")
        return time.monotonic() - t0

    async def main() -> tuple[list[float], list[float], list[float], list[float], float, float]:
        if not await br.prepare():
            raise RuntimeError(str(br.problem))
        await run("stanza-create")
        plain, full = [], []
        for i in range(repeat):
            out = WORK / f"plain-z{i}"
            t0 = time.monotonic()
            await asyncio.to_thread(subprocess.run, [
                str(BIN / "pg_basebackup"), "-D", str(out), "-Ft", "-z", "-X", "stream", "-c", "fast",
                "-h", str(sock), "-U", "postgres", "--no-password"], check=True, capture_output=True)
            plain.append(time.monotonic() - t0)
            shutil.rmtree(out)
            full.append(await run("backup-full"))
        small = []
        for _ in range(repeat):
            _sql(sock, "UPDATE pgbench_branches SET bbalance = bbalance + 1; "
                       "UPDATE pgbench_tellers SET tbalance = tbalance + 1")
            small.append(await run("backup-diff"))
        # the same differential by pgBackRest alone (no runner, no info after): what dvpnd adds
        from dvpnd.postgres.pgbackrest import backup_argv, plan_for

        alone = []
        for _ in range(repeat):
            _sql(sock, "UPDATE pgbench_branches SET bbalance = bbalance + 1")
            t0 = time.monotonic()
            await asyncio.to_thread(subprocess.run, _as_postgres(backup_argv(plan_for(config), "diff", 1)), check=True,
                                    capture_output=True, cwd="/")
            alone.append(time.monotonic() - t0)
        _sql(sock, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000 = 0")
        big = await run("backup-diff")
        t0 = time.monotonic()
        await asyncio.to_thread(pgbr_restore.restore, config, WORK / "restored", "latest", "local")
        restore = time.monotonic() - t0
        return plain, full, small, alone, big, restore

    plain, full, small, alone, big, restore = asyncio.run(main())
    shutil.rmtree(WORK / "restored", ignore_errors=True)
    # archiving under load: segments waiting in pg_wal, sampled while pgbench writes; first as
    # fast as it can (4 clients on this machine's cores: the archiver competes for the CPU), then
    # paced at half the rate it reached (a server with room to spare)
    data = config.postgres.data_dir
    seconds = "10" if scale < 50 else "20"

    def load(*rate: str) -> tuple[list[float], float]:
        proc = subprocess.Popen([str(BIN / "pgbench"), "-n", "-c", "4", "-T", seconds, *rate, "-h", str(sock),
                                 "-U", "postgres", "postgres"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        samples = []
        while proc.poll() is None:
            samples.append(float(_ready(data)))
            time.sleep(0.2)
        out = proc.communicate()[0]
        tps = [float(line.split("=")[1].split()[0]) for line in out.splitlines() if line.startswith("tps =")]
        return samples, (tps[0] if tps else 0.0)

    before = int(_sql(sock, "SELECT archived_count FROM pg_stat_archiver") or 0)
    waiting, tps = load()
    switched = int(_sql(sock, "SELECT archived_count FROM pg_stat_archiver") or 0) - before
    deadline = time.monotonic() + 120
    while _ready(data) and time.monotonic() < deadline:  # (drained before the paced run)
        time.sleep(0.5)
    paced, paced_tps = load("-R", str(max(1, int(tps / 2))))
    fm = statistics.median(full)
    return [
        Figure(f"pgBackRest full backup, local repository, scale {scale} ({mb:.0f} MB)", "s", full,
               anchor_name="pg_basebackup -Ft -z", anchor=plain, goal="≤ 1.0×",
               met=fm / statistics.median(plain) <= 1.0,
               note=f"through dvpnd (runner as postgres, info read after); lz4, process-max 2; "
                    f"{repeat} alternating runs; pgbench -i took {fill:.0f}s"),
        Figure("pgBackRest differential after small changes (branches, tellers)", "s", small,
               anchor_name="its full backup", anchor=full, goal="≤ 0.3×",
               met=statistics.median(small) / fm <= 0.3,
               note=f"{repeat} runs; pgbackrest alone (no runner, no info after): "
                    f"{statistics.median(alone):.2f} s, a floor whatever changed (pgBackRest 2.45's "
                    "PostgreSQL client answers each of its ~18 queries on a 100 ms poll)"),
        Figure("pgBackRest differential after touching the large table (1 row in 1000 of pgbench_accounts)", "s",
               [big], anchor_name="its full backup", anchor=full,
               note="pgBackRest 2.45 copies a changed file whole: reported, no goal"),
        Figure("pgBackRest restore of the latest state (local repository)", "s", [restore],
               note="into a new directory, not started"),
        Figure("WAL segments waiting to be archived under pgbench load (archive-async)", "segments", waiting,
               goal="≤ 2", met=statistics.median(waiting or [0]) <= 2,
               note=f"pgbench -c 4 unpaced ({tps:.0f} tps); sampled every 0.2 s; max {max(waiting or [0]):.0f}; "
                    f"{switched} archived during the run"),
        Figure("WAL segments waiting to be archived, pgbench paced at half that rate", "segments", paced,
               note=f"pgbench -c 4 -R {max(1, int(tps / 2))} ({paced_tps:.0f} tps); sampled every 0.2 s; "
                    f"max {max(paced or [0]):.0f}"),
    ]
