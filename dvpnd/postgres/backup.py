"""Verified local backups of the spoke's PostgreSQL server.

A backup is `pg_basebackup` in tar format, compressed, with its backup manifest, written to
`BACKUP_DIR/.partial-NAME/`. It counts only once `pg_verifybackup` has checked an extracted
copy against the manifest (WAL included); then `backup.json` is written, every file and the
directory are fsynced, and the directory is renamed to `BACKUP_DIR/NAME/`. A rename is atomic,
so a backup interrupted at any moment (killed, disk full, server gone) leaves only a
`.partial-`/`.verify-` directory, which is removed at once or at the next start; an entry
without the dot and with a readable `backup.json` is always a complete, verified backup.

Retention keeps the last `keep_last` and those newer than `keep_age`, and never the newest."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dvpnd.config.model import BackupConfig, Config, PostgresConfig
from dvpnd.errors import DvpnError
from dvpnd.util.fsutil import fsync_dir
from dvpnd.util.procutil import child_env, with_pdeathsig

log = logging.getLogger("dvpnd.backup")
META = "backup.json"
MANIFEST = "backup_manifest"
NAME_RE = re.compile(r"^\d{8}T\d{6}Z\Z")
PARTIAL_PREFIXES = (".partial-", ".verify-", ".deleting-")
SPACE_MARGIN = 1.10


class BackupError(DvpnError):
    """A backup, verification or restore failed; nothing that looks complete was left."""


class BackupRefused(BackupError):
    """A backup was not started (not enough space, one already running)."""


@dataclass(frozen=True)
class BackupEntry:
    name: str
    started: float
    finished: float
    duration_sec: float  # pg_basebackup and the fsyncs, without verification
    verify_sec: float
    size_bytes: int  # on disk, compressed
    extracted_bytes: int  # what verification (or a restore) unpacks
    server_role: str  # primary | replica, when it was taken
    node: str
    files: tuple[str, ...]
    verified: bool = True


# --- pure --------------------------------------------------------------------------------

def backup_name(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%dT%H%M%SZ")


def compress_arg(compress: str) -> str:
    method, _, level = compress.partition(":")
    if method == "none":
        return "none"
    return f"client-{method}" + (f":{level}" if level else "")


def basebackup_argv(pg: PostgresConfig, bc: BackupConfig, dest: Path, label: str) -> list[str]:
    return [str(pg.bin_dir / "pg_basebackup"), "-D", str(dest), "-Ft", f"--compress={compress_arg(bc.compress)}",
            "-X", "stream", "-c", "fast", "--manifest-checksums=CRC32C", "-h", str(pg.socket_dir),
            "-p", str(pg.port), "-U", "postgres", "--no-password", "-l", label,
            *(["--max-rate", bc.max_rate] if bc.max_rate else [])]


def plan_retention(entries: Sequence[BackupEntry], now: float, keep_last: int, keep_age: int) -> list[str]:
    """Names to delete. `entries` are newest first. A backup stays if it is among the last
    `keep_last` or younger than `keep_age` (a rule set to 0 keeps nothing by itself);
    the newest always stays."""
    doomed = []
    for i, e in enumerate(entries):
        if i == 0:
            continue
        if keep_last and i < keep_last:
            continue
        if keep_age and now - e.finished < keep_age:
            continue
        doomed.append(e.name)
    return doomed


def space_needed(last: BackupEntry | None, db_size: int | None, verify: bool) -> int | None:
    """Bytes a new backup needs in the backup directory (with verification's unpacked copy)."""
    if last is not None:
        need = last.size_bytes + (last.extracted_bytes if verify else 0)
    elif db_size is not None:
        need = db_size + (db_size if verify else 0)
    else:
        return None
    return int(need * SPACE_MARGIN)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --- reading the backup directory --------------------------------------------------------

def read_entry(path: Path) -> BackupEntry | None:
    if not NAME_RE.match(path.name) or not path.is_dir():
        return None
    try:
        data = json.loads((path / META).read_text())
        data["files"] = tuple(data.get("files", ()))
        entry = BackupEntry(**data)
    except (OSError, ValueError, TypeError):
        return None
    return entry if entry.verified and entry.name == path.name else None


def list_backups(directory: Path) -> list[BackupEntry]:
    """Complete, verified backups, newest first."""
    try:
        children = list(directory.iterdir())
    except FileNotFoundError:
        return []
    entries = [e for e in (read_entry(p) for p in children) if e is not None]
    return sorted(entries, key=lambda e: e.name, reverse=True)


def _group_members(pgid: int, marker: bytes) -> list[int]:
    """Live processes of process group `pgid` whose command line contains `marker`."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            if int(stat.rpartition(")")[2].split()[2]) == pgid and marker in (p / "cmdline").read_bytes():
                found.append(int(p.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def stop_orphans(directory: Path) -> list[int]:
    """End what an interrupted backup left running: pg_basebackup's WAL helper outlives a
    killed dvpnd. Each backup records its process group beside its directory; only members
    of that group still working in that directory are killed."""
    killed: list[int] = []
    for pgfile in directory.glob(".partial-*.pgid"):
        try:
            pgid = int(pgfile.read_text())
        except (OSError, ValueError):
            continue
        marker = str(directory / pgfile.name.removesuffix(".pgid")).encode()
        members = _group_members(pgid, marker)
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while members and time.monotonic() < deadline and _group_members(pgid, marker):
            time.sleep(0.05)
    return killed


def cleanup_partials(directory: Path) -> list[str]:
    """Remove what interrupted backups, verifications and deletions left."""
    removed: list[str] = []
    try:
        stop_orphans(directory)
        children = list(directory.iterdir())
    except FileNotFoundError:
        return removed
    for p in children:
        if p.name.startswith(PARTIAL_PREFIXES):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _fsync_tree(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for d in [*dirs, ""]:
            fd = os.open(os.path.join(root, d) if d else root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# --- subprocesses ------------------------------------------------------------------------

async def run_tool(argv: list[str], what: str, timeout: float, on_start: Callable[[int], None] | None = None) -> None:
    """Run a tool in its own process group, its output going to a temporary file.

    pg_basebackup forks a WAL-streaming helper; a pipe would stay open as long as the helper
    lives (and Python 3.11's Process.wait() waits for the pipes too). When the tool ends, is
    killed or times out, the whole group goes."""
    with tempfile.TemporaryFile() as output:
        try:
            # if dvpnd dies, so does the tool (no orphan writing a backup)
            proc = await asyncio.create_subprocess_exec(
                *with_pdeathsig(argv), stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                start_new_session=True, cwd="/", env=child_env())
        except FileNotFoundError:
            raise BackupError(f"{what}: {argv[0]} not found") from None
        if on_start is not None:
            on_start(proc.pid)
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), timeout=timeout)
        except TimeoutError:
            timed_out = True
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if proc.returncode is None:
                await proc.wait()
        output.seek(0)
        text = output.read()[-65536:].decode(errors="replace")
    if timed_out:
        raise BackupError(f"{what}: still running after {timeout:.0f}s; stopped")
    rc = proc.returncode or 0
    if rc != 0:
        lines = text.strip().splitlines()
        # The cause, not the clean-up notes that follow it ("removing contents of ...").
        errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
        reason = (errors or lines or [""])[-1]
        if rc < 0:
            reason = f"killed by signal {-rc}" + (f" ({reason})" if reason else "")
        raise BackupError(f"{what} failed: {reason or f'exit {rc}'}")


async def extract(pg: PostgresConfig, source: Path, dest: Path, timeout: float, owners: bool = True) -> None:
    """Unpack a tar-format backup (base + WAL) into `dest`. Without `owners` (verification: only
    the content matters) tar, even as root, sets no owner or mode: the unit's capability set has
    no CAP_CHOWN, and tar exits 2 trying."""
    keep = [] if owners else ["--no-same-owner", "--no-same-permissions"]
    tars = sorted(p.name for p in source.iterdir() if p.name.startswith(("base.tar", "pg_wal.tar")))
    base = next((t for t in tars if t.startswith("base.tar")), None)
    if base is None:
        raise BackupError(f"{source}: no base.tar* in the backup")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    await run_tool(["tar", *keep, "-xf", str(source / base), "-C", str(dest)], f"unpacking {source / base}", timeout)
    wal = next((t for t in tars if t.startswith("pg_wal.tar")), None)
    if wal is not None:
        (dest / "pg_wal").mkdir(mode=0o700, exist_ok=True)
        await run_tool(["tar", *keep, "-xf", str(source / wal), "-C", str(dest / "pg_wal")],
                   f"unpacking {source / wal}", timeout)


async def verify_dir(pg: PostgresConfig, source: Path, scratch: Path, timeout: float) -> tuple[float, int]:
    """Unpack `source` into `scratch`, check it with pg_verifybackup, remove `scratch`.
    Returns (seconds, unpacked bytes)."""
    t0 = time.monotonic()
    try:
        await extract(pg, source, scratch, timeout, owners=False)
        size = await asyncio.to_thread(_dir_size, scratch)
        await run_tool([str(pg.bin_dir / "pg_verifybackup"), "-q", "-m", str(source / MANIFEST), str(scratch)],
                   f"pg_verifybackup of {source.name}", timeout)
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    return time.monotonic() - t0, size


# --- taking a backup ---------------------------------------------------------------------

async def take_backup(config: Config, server_role: str, db_size: Callable[[], int | None],
                      on_pid: Callable[[int], None] | None = None, now: Callable[[], float] = time.time
                      ) -> BackupEntry:
    """One verified backup, in place under its final name; raises BackupError/BackupRefused.

    What interrupted backups left is removed by the caller when it starts (cleanup_partials),
    not here: a `dvpnctl backup verify` may be unpacking beside us."""
    pg, bc = config.postgres, config.backup
    bc.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = await asyncio.to_thread(list_backups, bc.dir)
    # The databases' size is the estimate only for a first backup: asked for only then.
    need = space_needed(existing[0] if existing else None,
                        None if existing else await asyncio.to_thread(db_size), bc.verify)
    free = shutil.disk_usage(bc.dir).free
    if need is not None and free < need:
        basis = f"the last backup ({existing[0].name})" if existing else "the databases' size"
        raise BackupRefused(f"backup refused: {bc.dir} has {human(free)} free, and {basis} says a backup "
                            f"{'and its verification need' if bc.verify else 'needs'} about {human(need)}")
    started = now()
    name = backup_name(started)
    if (bc.dir / name).exists():
        raise BackupRefused(f"backup {name} exists already (one backup per second at most)")
    tmp = bc.dir / f".partial-{name}"
    scratch = bc.dir / f".verify-{name}"
    tmp.mkdir(mode=0o700)
    pgid_file = bc.dir / f".partial-{name}.pgid"

    def started_pid(pid: int) -> None:
        pgid_file.write_text(f"{pid}\n")  # for stop_orphans, should dvpnd die mid-way
        if on_pid is not None:
            on_pid(pid)

    t0 = time.monotonic()
    try:
        await run_tool(basebackup_argv(pg, bc, tmp, f"dvpn {config.name} {name}"), "pg_basebackup", bc.timeout,
                   started_pid)
        duration = time.monotonic() - t0
        verify_sec, extracted = 0.0, 0
        if bc.verify:
            verify_sec, extracted = await verify_dir(pg, tmp, scratch, bc.timeout)
        files = tuple(sorted(p.name for p in tmp.iterdir()))
        size = await asyncio.to_thread(_dir_size, tmp)
        entry = BackupEntry(name=name, started=started, finished=now(), duration_sec=round(duration, 3),
                            verify_sec=round(verify_sec, 3), size_bytes=size, extracted_bytes=extracted,
                            server_role=server_role, node=config.name, files=files, verified=bc.verify)
        meta = tmp / META
        meta.write_text(json.dumps(asdict(entry), indent=2) + "\n")
        os.chmod(meta, 0o600)
        await asyncio.to_thread(_fsync_tree, tmp)
        os.rename(tmp, bc.dir / name)
        await asyncio.to_thread(fsync_dir, bc.dir)
        return entry
    finally:
        for d in (tmp, scratch):
            if d.exists():
                await asyncio.to_thread(shutil.rmtree, d, True)
        pgid_file.unlink(missing_ok=True)


def apply_retention(bc: BackupConfig, now: float) -> list[str]:
    entries = list_backups(bc.dir)
    doomed = plan_retention(entries, now, bc.keep_last, bc.keep_age)
    for name in doomed:
        # Renamed first, so a deletion cut short never leaves a half backup under a good name.
        gone = bc.dir / f".deleting-{name}"
        os.rename(bc.dir / name, gone)
        shutil.rmtree(gone, ignore_errors=True)
    if doomed:
        fsync_dir(bc.dir)
    return doomed


def entry_json(e: BackupEntry) -> dict[str, Any]:
    d = asdict(e)
    d["files"] = list(e.files)
    return d
