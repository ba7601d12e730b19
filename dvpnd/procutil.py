"""Ending processes this code started, by PID only."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

# None: first wait without sending anything (a process already on its way out).
DEFAULT_ESCALATION: Sequence[int | None] = (None, signal.SIGTERM, signal.SIGKILL)


def wait_exit(pid: int, timeout: float, signals: Sequence[int | None] = DEFAULT_ESCALATION) -> None:
    """Send each signal in turn and wait up to `timeout` after each for `pid` to be gone.

    A process still tearing down can hold resources a successor needs (wireguard-go removes
    its interface by name), so callers wait. Our own children are reaped on the way."""
    for sig in signals:
        if sig is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
