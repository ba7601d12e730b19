"""dvpnd's side of pgBackRest (its backups): prepare its home, keep the schedule,
run each operation through the runner (as the server's user), and report (issue 19).

dvpnd decides and reports; pgBackRest does the work (backups, WAL archiving, retention after
each backup, verification). The schedule survives restarts: the newest backups come from
pgBackRest's own `info`, the other operations' last runs from the runner's result files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from dvpnd.config.model import Config
from dvpnd.daemon.status import BackRestView, backrest_json
from dvpnd.errors import DvpnError
from dvpnd.postgres import pgbr_home, pgbr_keys
from dvpnd.postgres.pgbackrest import OPS, plan_for, render_conf, render_runner, render_secrets
from dvpnd.postgres.pgbr_status import RepoView, behind, error_line, next_op, printable, read_info

log = logging.getLogger("dvpnd.pgbackrest")
TICK = 5.0
PREPARE_RETRY = 60.0


FULL_BELOW = 0.05  # a local repository's file system with less than this share free is "full"


def disk_free(path: Path) -> tuple[int, int] | None:
    """(bytes free to the postgres user, bytes in all) of the file system holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def archive_error(spool: Path, stanza: str) -> str | None:
    """Why asynchronous archive-push last failed, from its spool (`out/*.error`: an error code
    line, then the message), None if nothing failed. The files are the postgres user's: read
    as text, bounded, only printable characters kept."""
    out = spool / "archive" / stanza / "out"
    try:
        with os.scandir(out) as it:
            errors = [e for e in it if e.name.endswith(".error") and e.is_file(follow_symlinks=False)]
        if not errors:
            return None
        newest = max(errors, key=lambda e: e.stat(follow_symlinks=False).st_mtime)
        fd = os.open(newest.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(2000)
    except (OSError, ValueError):
        return None
    lines = [ln.strip() for ln in raw.decode(errors="replace").splitlines() if ln.strip()]
    text = " ".join(lines[1:] if len(lines) > 1 and lines[0].isdigit() else lines)
    return printable(text)[:600] or None


def runner_wal(result: dict[str, Any]) -> tuple[int, int] | None:
    """The runner's count of pg_wal (bytes, segments waiting) from an info result (the postgres
    user's file: two integers in range, or nothing)."""
    wal = result.get("wal")
    if (isinstance(wal, list) and len(wal) == 2
            and all(type(x) is int and 0 <= x < 1 << 50 for x in wal)):
        return wal[0], wal[1]
    return None


class BackRest:
    def __init__(self, config: Config, environ: dict[str, str] | None = None):
        self.config = config
        b = config.backup.pgbackrest
        assert b is not None
        self.cfg = b
        self.plan = plan_for(config)
        self.environ = dict(os.environ if environ is None else environ)
        self.last_ok: dict[str, float] = {}
        self.last_fail: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.repos: dict[int, RepoView] = {}
        self.running: str | None = None
        self.prepared = False
        self.problem: str | None = None  # why pgBackRest cannot run at all (its files, the secrets)
        self.wal_bytes = 0
        self.wal_ready = 0
        self.disk: tuple[int, int] | None = None  # the local repository's (free, size)
        self.archive_error: str | None = None
        self.lock = asyncio.Lock()  # one pgBackRest operation at a time
        self.since = time.time()
        self.drill_databases: int | None = None  # what the last restore drill's server held

    # --- preparing ---

    async def prepare(self) -> bool:
        """Secrets fetched, files rendered and written; False (and `problem`) on any failure:
        nothing half-written is used (each file is replaced whole)."""
        try:
            o = self.cfg.offsite
            key_id = secret = passphrase = ""
            if o is not None:
                key_id, secret, passphrase = await pgbr_keys.offsite_secrets(o, self.plan.stanza, self.environ)
            files = pgbr_home.Files(conf=render_conf(self.plan),
                                    secrets=render_secrets(self.plan, key_id, secret, passphrase),
                                    runner=render_runner(self.plan, self.cfg.binary, self.config.postgres.bin_dir))
            if pgbr_home.use_systemd(self.cfg.runner):
                await pgbr_home.layout(self.plan.home, self.cfg.runner)
                written = await asyncio.to_thread(pgbr_home.write_files, self.plan, files)
            else:
                written = await asyncio.to_thread(pgbr_home.apply_home, self.plan, files, self.cfg.repo,
                                                  self.config.postgres.os_user)
        except (DvpnError, OSError) as e:
            self.problem = f"pgBackRest cannot run: {e}"
            log.error("%s", self.problem)
            return False
        if written:
            log.info("pgBackRest: wrote %s in %s", ", ".join(written), self.plan.home)
        self.problem, self.prepared = None, True
        self.seed()
        return True

    def seed(self) -> None:
        """The last run of each operation, from the runner's result files (after a restart)."""
        for op in OPS:
            r = pgbr_home.read_result(self.plan.home, op)
            if r is None:
                continue
            book = self.last_ok if r.get("ok") is True else self.last_fail
            book[op] = max(book.get(op, 0.0), float(r["finished"]))

    # --- running ---

    async def run(self, op: str) -> bool:
        """One operation through the runner; True if pgBackRest succeeded in every repository.
        After a backup (or a stanza-create, a check), pgBackRest's info is read again."""
        async with self.lock:
            ok = await self._run(op)
            if op != "info" and (ok or op.startswith("backup-")):
                await self._refresh()
            return ok

    async def refresh(self) -> None:
        async with self.lock:
            await self._refresh()

    async def _run(self, op: str) -> bool:
        self.running, t0 = op, time.time()
        if op != "info":
            log.info("pgBackRest %s starting", op)
        try:
            rc, err = await pgbr_home.run_op(self.plan.home, op, self.config.postgres.os_user, self.cfg.runner)
        finally:
            self.running = None
        r = await asyncio.to_thread(pgbr_home.read_result, self.plan.home, op)
        fresh = r is not None and float(r["started"]) >= t0 - 1
        ok = rc == 0 and fresh and r is not None and r.get("ok") is True
        if ok:
            self.last_ok[op] = time.time()
            self.errors.pop(op, None)
            check = r.get("check") if r is not None else None
            if op == "drill" and isinstance(check, dict) and isinstance(check.get("databases"), int):
                self.drill_databases = check["databases"]
            log.info("pgBackRest %s done in %.1f s", op, time.time() - t0)
        else:
            self.last_fail[op] = time.time()
            steps = r.get("steps") if fresh and r is not None else None
            failed = [s for s in steps or [] if isinstance(s, dict) and s.get("rc") != 0]
            why = error_line(str(failed[0].get("stderr", ""))) if failed else ""
            self.errors[op] = why or err.strip()[-500:] or f"the runner exited {rc} without a result"
            log.error("pgBackRest %s failed: %s", op, self.errors[op])
        return ok

    async def _refresh(self) -> None:
        """pgBackRest's info: the repositories' newest backups and archived WAL."""
        await asyncio.to_thread(self._read_local)
        if not await self._run("info"):
            return
        r = await asyncio.to_thread(pgbr_home.read_result, self.plan.home, "info")
        if r is None:
            return
        wal = runner_wal(r)  # (counted as the server's user: dvpnd's unit cannot read pg_wal)
        if wal is not None:
            self.wal_bytes, self.wal_ready = wal
        repos = read_info(r.get("info"), self.plan.stanza, tuple(x.index for x in self.plan.repos))
        for k, v in repos.items():
            before = self.repos.get(k)
            if not v.ok and v.wal_max is None and before is not None and before.wal_max is not None:
                # unreachable: what it held when last seen still counts for "behind by"
                repos[k] = replace(v, wal_max=before.wal_max, last_full=v.last_full or before.last_full,
                                   last_diff=v.last_diff or before.last_diff)
        self.repos = repos
        # a backup counts as done when every repository has one: the oldest of their newest
        # (a backup that reached the local repository only is done again, not skipped for a week)
        for op, field in (("backup-full", "last_full"), ("backup-diff", "last_diff")):
            times = [getattr(v, field) for v in self.repos.values()]
            if times and None not in times:
                t = min(times)
                if t > self.last_ok.get(op, 0):
                    self.last_ok[op] = t

    def _read_local(self) -> None:
        """What dvpnd reads itself (a thread): pg_wal's backlog (where it may), the local
        repository's free space, archive-push's last error."""
        self.wal_bytes, self.wal_ready = pgbr_home.wal_backlog(self.config.postgres.data_dir)
        self.disk = disk_free(self.cfg.repo)
        self.archive_error = archive_error(self.plan.home / "spool", self.plan.stanza)

    async def loop(self, stopping: asyncio.Event, primary: Callable[[], bool]) -> None:
        next_prepare, next_refresh = 0.0, 0.0
        while not stopping.is_set():
            now = time.time()
            try:
                if not self.prepared and now >= next_prepare:
                    next_prepare = now + PREPARE_RETRY
                    if await self.prepare() and primary():
                        await self.refresh()
                if self.prepared:
                    op = next_op(self.cfg, now, primary(), self.last_ok, self.last_fail)
                    if op is not None:
                        await self.run(op)
                    elif now >= next_refresh and primary():
                        next_refresh = now + 60
                        await self.refresh()
            except Exception as e:  # noqa: BLE001 - the loop must go on
                log.exception("pgBackRest supervision failed: %s", e)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=TICK)
            except TimeoutError:
                pass

    # --- reporting ---

    def offsite_behind(self) -> int | None:
        """WAL segments not yet in the offsite repository: what its archive lacks against the
        local one's, and while the store does not answer, every segment waiting in pg_wal
        (PostgreSQL keeps a segment until it is archived everywhere)."""
        local, off = self.repos.get(1), self.repos.get(2)
        if off is None:
            return None
        n = (behind(local.wal_max, off.wal_max) if local is not None else None) or 0
        return max(n, self.wal_ready) if not off.ok else n

    def problems(self) -> list[str]:
        out = [self.problem] if self.problem else []
        names = {1: "local", 2: "offsite"}
        for k, v in sorted(self.repos.items()):
            if not v.ok:
                out.append(f"{names.get(k, k)} repository: {v.status}")
        for op, why in sorted(self.errors.items()):
            out.append(f"pgBackRest {op} failed: {why}")
        if self.archive_error and self.wal_ready:
            out.append(f"WAL archiving fails: {self.archive_error}")
        if self.disk is not None and self.disk[0] < FULL_BELOW * self.disk[1]:
            out.append(f"local repository {self.cfg.repo}: its file system has {self.disk[0] >> 20} MiB free "
                       f"of {self.disk[1] >> 20} MiB")
        n = self.offsite_behind()
        if n:
            out.append(f"offsite behind by {n} WAL segment{'s' if n != 1 else ''}")
        if self.wal_bytes > self.cfg.wal_alarm:
            out.append(f"pg_wal holds {self.wal_bytes >> 20} MiB (alarm at {self.cfg.wal_alarm >> 20} MiB); "
                       f"{self.wal_ready} segments wait to be archived")
        return out

    def snapshot(self, primary: bool) -> BackRestView:
        return BackRestView(
            stanza=self.plan.stanza, running=self.running, repos=tuple(v for _, v in sorted(self.repos.items())),
            offsite_behind=self.offsite_behind(), wal_bytes=self.wal_bytes, wal_waiting=self.wal_ready,
            last_ok=tuple(sorted(self.last_ok.items())), problems=tuple(self.problems()), primary=primary,
            overdue_after=2 * self.cfg.diff_every, since=self.since, drill_databases=self.drill_databases)

    async def backup_now(self) -> bool:
        """`dvpnctl backup now`: a differential backup (a full one if there is none yet)."""
        if self.lock.locked():
            raise DvpnError(f"pgBackRest {self.running or 'info'} is running; try again when it is done")
        return await self.run("backup-diff" if "backup-full" in self.last_ok else "backup-full")

    def view(self) -> dict[str, Any]:
        """The detailed status's `backup` (as this node's primary would show it)."""
        return backrest_json(self.snapshot(True))
