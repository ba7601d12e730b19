"""The database side of a spoke's dvpnd: polls the local PostgreSQL server, a background task
of the daemon's one event loop whose result the snapshot reads (the backups are pgBackRest's,
supervised by pgbr_supervisor)."""

from __future__ import annotations

import asyncio
import logging

from dvpnd.config.model import Config
from dvpnd.postgres import state

log = logging.getLogger("dvpnd.db")
POLL_INTERVAL = 5.0


class DbSupervisor:
    def __init__(self, config: Config):
        self.config = config
        self.view: state.PgView | None = None
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
