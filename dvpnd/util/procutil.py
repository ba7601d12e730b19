"""Processes: ending the ones this code started, by PID only; a function run as another user."""

from __future__ import annotations

import json
import os
import pwd
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dvpnd.errors import DvpnError

T = TypeVar("T")


class ChildError(DvpnError):
    """A function run in a child process as another user failed; the message says why."""

# None: first wait without sending anything (a process already on its way out).
DEFAULT_ESCALATION: Sequence[int | None] = (None, signal.SIGTERM, signal.SIGKILL)


def wait_exit(pid: int, timeout: float, signals: Sequence[int | None] = DEFAULT_ESCALATION) -> None:
    """Send each signal in turn and wait up to `timeout` after each for `pid` to be gone.

    A process still tearing down can hold resources a successor needs (wireguard-go removes
    its interface by name), so callers wait. Our own children are reaped on the way."""
    wait_exit_all([pid], timeout, signals)


def wait_exit_all(pids: Sequence[int], timeout: float, signals: Sequence[int | None] = DEFAULT_ESCALATION) -> None:
    """wait_exit for several processes at once: each signal goes to every one still there, then
    one wait of up to `timeout` for all of them (not `timeout` each)."""
    left = list(dict.fromkeys(pids))
    for sig in signals:
        if sig is not None:
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            still = []
            for pid in left:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                try:
                    os.kill(pid, 0)
                    still.append(pid)
                except ProcessLookupError:
                    pass
            left = still
            if left:
                time.sleep(0.05)
        if not left:
            return


def call_as(uid: int, gid: int, fn: Callable[[], T], what: str) -> T:
    """`fn()` in a forked child running as uid/gid (with that user's groups); its result, a
    JSON value, comes back through a pipe, and an exception's text as ChildError.

    For root writing into a tree another user controls: the kernel then checks every path as
    that user sees it, symbolic links included. Only from a single-threaded process (dvpnctl):
    a fork copies one thread, and a lock another thread held would never be released."""
    if threading.active_count() != 1:
        raise ChildError(f"{what}: refusing to fork from a threaded process")
    name = pwd.getpwuid(uid).pw_name
    groups = os.getgrouplist(name, gid)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        payload: dict[str, Any]
        try:
            os.close(r)
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            payload = {"ok": fn()}
            code = 0
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            payload = {"error": str(e) or type(e).__name__}
        try:
            os.write(w, json.dumps(payload).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    try:
        payload = json.loads(data)
    except ValueError:
        raise ChildError(f"{what}: the child (as {name}) ended with status {status} and said nothing") from None
    if "error" in payload:
        raise ChildError(f"{what} (as {name}): {payload['error']}")
    result: T = payload["ok"]
    return result


def with_pdeathsig(argv: list[str]) -> list[str]:
    """argv that dies with its parent (SIGKILL), set by setpriv rather than a preexec_fn (which
    can deadlock in a threaded process). The kernel clears the setting when a process changes
    its user, so an argv that already runs through setpriv gets it in that same setpriv call."""
    if argv and argv[0] == "setpriv":
        return ["setpriv", "--pdeathsig", "KILL", *argv[1:]]
    return ["setpriv", "--pdeathsig", "KILL", "--", *argv]


def child_env(**extra: str) -> dict[str, str]:
    """A minimal environment for a tool dvpnd starts: nothing that reached dvpnd's own
    environment (a container's DVPN_PG_REPLICATION_PASSWORD, say) travels on."""
    env = {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    env.update(extra)
    return env
