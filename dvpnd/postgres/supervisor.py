"""The database side of a spoke's dvpnd: polls the local PostgreSQL server and runs the
scheduled, verified backups. Both are background tasks of the daemon's one event loop;
their results land in small state objects that the snapshot reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

from dvpnd.config.model import Config
from dvpnd.errors import DvpnError
from dvpnd.postgres import backup, state

log = logging.getLogger("dvpnd.db")
POLL_INTERVAL = 5.0
BACKUP_TICK = 1.0
MIN_RETRY = 30


@dataclass(frozen=True)
class BackupStatus:
    interval: int
    since: float  # when dvpnd started looking after backups
    last_success: float | None = None
    last_name: str | None = None
    last_duration_sec: float | None = None
    last_verify_sec: float | None = None
    last_size_bytes: int | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    successes: int = 0
    failures: int = 0
    kept: int = 0
    running_pid: int | None = None
    running_since: float | None = None
    next_due: float | None = None

    def age(self, now: float) -> float | None:
        return None if self.last_success is None else max(0.0, now - self.last_success)

    def overdue(self, now: float) -> bool:
        """Older than twice the interval (counting from dvpnd's start when there is none yet)."""
        return now - (self.last_success if self.last_success is not None else self.since) > 2 * self.interval


def retry_delay(interval: int) -> float:
    return float(max(MIN_RETRY, min(interval // 4, 600)))


class DbSupervisor:
    def __init__(self, config: Config):
        self.config = config
        self.view: state.PgView | None = None
        self.backup_lock = asyncio.Lock()
        self.status = BackupStatus(interval=config.backup.interval, since=time.time())
        self._last_role: str | None = None

    # --- polling ---

    async def poll(self) -> state.PgView:
        view = await asyncio.to_thread(state.read_status, self.config.postgres)
        if view.role != self._last_role:
            if view.up:
                log.info("postgres %s: %s (version %s)", "up" if self._last_role in (None, "down") else "now",
                         view.role, view.version)
            else:
                log.warning("postgres down: %s", view.error)
            self._last_role = view.role
        self.view = view
        return view

    async def poll_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.poll()
            except Exception as e:  # noqa: BLE001 - a poll must never end the loop
                log.warning("postgres poll failed: %s", e)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=POLL_INTERVAL)
            except TimeoutError:
                pass

    # --- backups ---

    async def load_existing(self) -> None:
        bc = self.config.backup
        for name in await asyncio.to_thread(backup.cleanup_partials, bc.dir):
            log.info("removed %s left by an interrupted backup", bc.dir / name)
        entries = await asyncio.to_thread(backup.list_backups, bc.dir)
        if entries:
            e = entries[0]
            self.status = replace(self.status, last_success=e.finished, last_name=e.name,
                                  last_duration_sec=e.duration_sec, last_verify_sec=e.verify_sec,
                                  last_size_bytes=e.size_bytes, kept=len(entries))
        self._schedule_after_success()

    def reschedule(self) -> None:
        """After a reload: the new interval applies from the last success."""
        self.status = replace(self.status, interval=self.config.backup.interval)
        if not self.backup_lock.locked() and self.status.last_error is None:
            self._schedule_after_success()

    def _schedule_after_success(self) -> None:
        last = self.status.last_success
        self.status = replace(self.status, next_due=(last + self.config.backup.interval) if last else time.time())

    async def backup_now(self) -> backup.BackupEntry:
        """Take one backup now; BackupRefused if one is running or it cannot fit."""
        if self.backup_lock.locked():
            raise backup.BackupRefused(f"a backup is already running (pid {self.status.running_pid})")
        async with self.backup_lock:
            return await self._take()

    async def _take(self) -> backup.BackupEntry:
        config = self.config
        view = self.view or await self.poll()
        self.status = replace(self.status, running_since=time.time())

        def on_pid(pid: int) -> None:
            self.status = replace(self.status, running_pid=pid)

        log.info("backup starting into %s", config.backup.dir)
        try:
            entry = await backup.take_backup(config, view.role, lambda: state.database_size(config.postgres), on_pid)
        except DvpnError as e:
            self.status = replace(self.status, last_error=str(e), last_error_at=time.time(),
                                  failures=self.status.failures + 1,
                                  next_due=time.time() + retry_delay(config.backup.interval))
            log.error("backup failed: %s", e)
            raise
        finally:
            self.status = replace(self.status, running_pid=None, running_since=None)
        removed = await asyncio.to_thread(backup.apply_retention, config.backup, time.time())
        kept = len(await asyncio.to_thread(backup.list_backups, config.backup.dir))
        self.status = replace(self.status, last_success=entry.finished, last_name=entry.name,
                              last_duration_sec=entry.duration_sec, last_verify_sec=entry.verify_sec,
                              last_size_bytes=entry.size_bytes, last_error=None, last_error_at=None,
                              successes=self.status.successes + 1, kept=kept)
        self._schedule_after_success()
        log.info("backup %s done: %s in %.1fs, verified in %.1fs; %d kept%s", entry.name,
                 backup.human(entry.size_bytes), entry.duration_sec, entry.verify_sec, kept,
                 f", removed {', '.join(removed)}" if removed else "")
        return entry

    async def backup_loop(self, stopping: asyncio.Event) -> None:
        try:
            await self.load_existing()
        except OSError as e:
            log.error("backup directory %s: %s", self.config.backup.dir, e)
        while not stopping.is_set():
            due = self.status.next_due
            view = self.view
            if (due is not None and time.time() >= due and view is not None and view.up
                    and not self.backup_lock.locked()):
                try:
                    async with self.backup_lock:
                        await self._take()
                except DvpnError:
                    pass  # recorded in the status and logged
                except Exception as e:  # noqa: BLE001
                    log.exception("backup failed unexpectedly: %s", e)
                    self.status = replace(self.status, last_error=f"unexpected: {e}", last_error_at=time.time(),
                                          failures=self.status.failures + 1,
                                          next_due=time.time() + retry_delay(self.config.backup.interval))
            try:
                await asyncio.wait_for(stopping.wait(), timeout=BACKUP_TICK)
            except TimeoutError:
                pass
