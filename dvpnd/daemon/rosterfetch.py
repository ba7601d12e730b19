"""A confidential spoke asks the hub for the roster, over the transit (the hub's transit address,
TCP `overlay.port`). The request is a long poll: `If-None-Match` names the roster it has and
`?wait=HOLD` lets the hub hold the answer until a newer one arrives (at once) or HOLD seconds
pass (a 304), so a change reaches every spoke within moments while an idle spoke costs the hub a
few packets per hold. A hub that answers at once anyway (an older dvpnd) is asked again after
`overlay.roster_poll` seconds, as is one that cannot be reached. A spoke that is not in the roster
in force asks without a hold: the hub drops its transit peer, so a held request would hang on a
dead connection until the hold ends, and the roster that lets it back in would wait as long.
With several hubs a spoke asks each of them, and hands a hub found behind (one that was down
when the operator published) the roster in force; a request to a hub the probes find dead is
given up at once, which that hub verifies like any other: the
roster reaches every hub without the hubs trusting, or even reaching, each other.
The hub is not trusted: what it serves goes through the keeper like anything else, and a hub
that answers nothing, garbage or an old roster leaves the last verified roster in force; a
refused document is judged (and counted) once, not at every poll."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from dvpnd.daemon.rosterkeeper import RosterKeeper, etag_of
from dvpnd.roster.model import RosterError, read_capped

log = logging.getLogger("dvpnd.roster")
TIMEOUT = 5.0  # to connect, and for an answer beyond the hold
HOLD = 300.0  # the long poll (the hub caps it at its ROSTER_HOLD_MAX)


async def fetch_once(session: aiohttp.ClientSession, url: str, etag: str | None,
                     hold: float = 0.0) -> tuple[int, bytes, str | None]:
    headers = {"If-None-Match": etag} if etag else {}
    params = {"wait": f"{hold:g}"} if etag and hold else {}
    timeout = aiohttp.ClientTimeout(total=hold + TIMEOUT, connect=TIMEOUT)
    async with session.get(url, headers=headers, params=params, allow_redirects=False, timeout=timeout) as resp:
        if resp.status != 200:
            return resp.status, b"", None
        # (one read returns only what is there so far; the keeper refuses what is over the limit)
        return 200, await read_capped(resp.content), resp.headers.get("ETag")


async def fetch_loop(keeper: RosterKeeper, url: str, interval: float, stopping: asyncio.Event,
                     adopted: Callable[[], Awaitable[object]], hold: float = HOLD,
                     member: Callable[[], bool] = lambda: True, share: bool = False,
                     alive: Callable[[], bool] = lambda: True) -> None:
    seen: str | None = keeper.etag  # the last document judged, adopted or not
    failing: str | None = None
    shared: tuple[str | None, str | None] | None = None
    seen_bad = False
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        while not stopping.is_set():
            started = loop.time()
            took_new = False
            asked = hold if member() else 0.0
            try:
                # with several hubs, ask with the roster this spoke has, so that a hub behind it
                # answers (and is handed ours) rather than holding on to its own
                ask = keeper.etag if share and keeper.etag else seen
                status, body, _ = await _unless_dead(fetch_once(session, url, ask, asked), alive)
                problem = None if status in (200, 304) else f"HTTP {status}"
                behind = status == 404
                if status == 200:
                    tag = etag_of(body)
                    if tag != seen:  # a document judged once is not offered (nor counted) again
                        seen, seen_bad = tag, False
                        try:
                            if await asyncio.to_thread(keeper.offer, body, f"the roster from {url}"):
                                took_new = True
                                await adopted()
                        except RosterError as e:
                            seen_bad = e.reason != "older"  # counted and logged; ours stays
                    # a hub serving a genuine roster other than ours has an older one
                    behind = tag != keeper.etag and not seen_bad
                if share and behind and keeper.document is not None and shared != (seen, keeper.etag):
                    # a hub that was down when the roster changed: hand it ours (it verifies it
                    # like any other), once per roster it has and roster we have; a hand that
                    # got no answer (the hub just back, its link still coming up) is tried again
                    if await share_once(session, url, keeper.document):
                        shared = (seen, keeper.etag)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                problem = str(e) or type(e).__name__
            if problem != failing:
                if problem:
                    log.info("cannot fetch the roster from %s: %s (keeping serial %s)", url, problem,
                             keeper.roster.serial if keeper.roster else None)
                else:
                    log.info("fetching the roster from %s again", url)
                failing = problem
            # after a held answer or a roster it took, the next request goes at once (the hub holds
            # it); after anything else (an error, a refused or an unchanged document answered at
            # once: an older or a hostile hub) it waits roster_poll
            pause = 0.0 if took_new or was_held(problem, loop.time() - started, asked) else interval
            try:
                await asyncio.wait_for(stopping.wait(), timeout=pause)
            except TimeoutError:
                pass


async def _unless_dead(request: Awaitable[tuple[int, bytes, str | None]],
                       alive: Callable[[], bool]) -> tuple[int, bytes, str | None]:
    """The request's answer, or TimeoutError as soon as `alive()` says the hub is down (probes
    through it go unanswered): a held request to a hub that died hangs on a dead connection, and
    the hub's return would otherwise go unnoticed until the hold ends."""
    task = asyncio.ensure_future(request)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                return task.result()
            if not alive():
                raise TimeoutError("the hub does not answer probes")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def share_once(session: aiohttp.ClientSession, url: str, document: bytes) -> bool:
    """Offer the hub our roster; True if it answered (whatever it said: a refusal is its own)."""
    try:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with session.post(url, data=document, headers={"Content-Type": "application/json"},
                                allow_redirects=False, timeout=timeout) as resp:
            text = (await resp.text())[:200].strip()
            log.info("handed the roster in force to %s: HTTP %d %s", url, resp.status, text)
            return True
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        log.info("cannot hand the roster to %s: %s", url, str(e) or type(e).__name__)
        return False


def was_held(problem: str | None, took: float, hold: float) -> bool:
    """Whether the next request may go at once: the last one was answered, and the hub held it
    (most of the hold) rather than answering at once."""
    return problem is None and hold > 0 and took >= min(hold / 2, hold - 1)
