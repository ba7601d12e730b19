"""Sending WebSocket messages at once (no task and no turn of the event loop per datagram), in
order, with a bounded queue behind a send that must wait for the socket to drain.

A message on the relay is one WireGuard datagram: a task per send would cost a turn of the loop
per datagram and add to every packet's latency. aiohttp's send is a coroutine that returns
without suspending unless its writer must wait for the transport to drain; `Sender` runs that
coroutine's first step in the caller (as Python 3.12's eager tasks do) and only when it suspends
hands the rest to a task, behind which later messages wait."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


class Sender:
    def __init__(self, send: Callable[[bytes], Awaitable[None]], limit: int) -> None:
        self._send = send
        self.limit = limit
        self.queue: deque[bytes] = deque()
        self.task: asyncio.Task[None] | None = None
        self.blocked_since: float | None = None  # (loop time) a send waiting for the socket to drain
        self.error: BaseException | None = None
        self.sent = 0

    def send(self, data: bytes) -> bool:
        """Sends `data` now, or queues it behind a send that waits; False when the queue is full
        (the datagram is dropped, as UDP would) or the connection failed."""
        if self.error is not None:
            return False
        if self.task is not None:
            if len(self.queue) >= self.limit:
                return False
            self.queue.append(data)
            return True
        coro: Coroutine[Any, Any, None] = self._send(data)  # type: ignore[assignment]
        try:
            waiting = coro.send(None)
        except StopIteration:
            self.sent += 1
            return True
        except Exception as e:  # noqa: BLE001 (ConnectionResetError and the like: the connection is gone)
            self.error = e
            return False
        self.blocked_since = asyncio.get_running_loop().time()
        self.task = asyncio.ensure_future(self._rest(coro, waiting))
        return True

    async def _rest(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        try:
            while True:  # drive the suspended send to its end
                try:
                    if waiting is None:
                        await asyncio.sleep(0)
                    else:
                        await asyncio.wait([waiting])
                except asyncio.CancelledError:
                    coro.close()
                    raise
                try:
                    waiting = coro.send(None)
                except StopIteration:
                    break
            self.sent += 1
            while self.queue:
                self.blocked_since = asyncio.get_running_loop().time()
                await self._send(self.queue.popleft())
                self.sent += 1
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            self.error = e
            self.queue.clear()
        finally:
            self.blocked_since = None
            if self.task is asyncio.current_task():
                self.task = None

    async def close(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.queue.clear()
        self.blocked_since = None
