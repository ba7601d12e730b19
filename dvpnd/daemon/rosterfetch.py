"""A confidential spoke asks the hub for the roster, over the transit (the hub's transit address,
TCP `overlay.port`), every `overlay.roster_poll` seconds. The hub is not trusted: what it
serves goes through the keeper like anything else, and a hub that answers nothing, garbage or
an old roster leaves the last verified roster in force. `If-None-Match` makes an unchanged
roster a 304, so a refused document is judged (and counted) once, not once a second."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from dvpnd.daemon.rosterkeeper import RosterKeeper, etag_of
from dvpnd.roster.model import MAX_DOCUMENT_BYTES, RosterError

log = logging.getLogger("dvpnd.roster")
TIMEOUT = 5.0


async def fetch_once(session: aiohttp.ClientSession, url: str, etag: str | None) -> tuple[int, bytes, str | None]:
    headers = {"If-None-Match": etag} if etag else {}
    async with session.get(url, headers=headers, allow_redirects=False) as resp:
        if resp.status != 200:
            return resp.status, b"", None
        body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
        return 200, body, resp.headers.get("ETag")


async def fetch_loop(keeper: RosterKeeper, url: str, interval: float, stopping: asyncio.Event,
                     adopted: Callable[[], Awaitable[object]]) -> None:
    seen: str | None = keeper.etag  # the last document judged, adopted or not
    failing: str | None = None
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        while not stopping.is_set():
            try:
                status, body, _ = await fetch_once(session, url, seen)
                problem = None if status in (200, 304) else f"HTTP {status}"
                if status == 200:
                    seen = etag_of(body)
                    try:
                        if keeper.offer(body, f"the roster from {url}"):
                            await adopted()
                    except RosterError:
                        pass  # counted and logged by the keeper; the last good roster stays
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                problem = str(e) or type(e).__name__
            if problem != failing:
                if problem:
                    log.info("cannot fetch the roster from %s: %s (keeping serial %s)", url, problem,
                             keeper.roster.serial if keeper.roster else None)
                else:
                    log.info("fetching the roster from %s again", url)
                failing = problem
            try:
                await asyncio.wait_for(stopping.wait(), timeout=interval)
            except TimeoutError:
                pass
