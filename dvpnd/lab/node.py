"""A lab node (the leaf the rest of the lab builds on): what it is, and running a command in it,
in its network namespace with its private /run/wireguard."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dvpnd.errors import DvpnError

LAB_DIR = Path(os.environ.get("DVPN_LAB_DIR", "/run/dvpn-lab"))
T = TypeVar("T")


@dataclass
class Node:
    name: str
    role: str  # hub | spoke | router | outside
    netns: str
    public_ip: str
    overlay_ip: str | None
    status_url: str | None
    state_dir: str | None
    config: str | None
    dir: str

    @property
    def runs_dvpnd(self) -> bool:
        return self.role in ("hub", "spoke")


def node_argv(node: Node, argv: list[str]) -> list[str]:
    """argv that runs `argv` in the node: its network namespace and its private /run/wireguard."""
    wgdir = Path(node.dir) / "wireguard"
    script = 'mount --bind "$0" /run/wireguard && exec "$@"'
    return ["ip", "netns", "exec", node.netns, "sh", "-c", script, str(wgdir), *argv]


def node_env(node: Node) -> dict[str, str]:
    env = dict(os.environ)
    if node.config:
        env["DVPN_CONFIG"] = node.config
    return env


def run_in(node: Node, argv: list[str], check: bool = True, timeout: float = 60, capture: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` in the node; with `check`, a failure is a DvpnError saying what exited and why."""
    r = subprocess.run(node_argv(node, argv), timeout=timeout, text=True, capture_output=capture,
                       env=dict(node_env(node), **(env or {})))
    if check and r.returncode != 0:
        raise DvpnError(f"{node.name}: {' '.join(argv[-6:])} exited {r.returncode}: "
                        f"{(r.stderr or r.stdout or '').strip()}")
    return r


def wait_until(cond: Callable[[], T | None], timeout: float, step: float, failed: Callable[[], str]) -> T:
    """Poll `cond` every `step` seconds until it returns something (returned), or raise
    DvpnError(failed()) after `timeout`. `cond` may raise to stop early."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got is not None and got is not False:
            return got
        if time.monotonic() >= deadline:
            raise DvpnError(failed())
        time.sleep(step)


def wait_for(what: str, cond: Callable[[], T | None], timeout: float = 30, step: float = 0.25) -> T:
    """Poll `cond` until it returns something true (returned), failing with "timed out after Ns
    waiting for WHAT" (the lab tests and the benchmarks). Unlike wait_until, any false value
    ("", 0, []) means not yet: a command's empty output is no answer."""
    return wait_until(lambda: cond() or None, timeout, step, lambda: f"timed out after {timeout}s waiting for {what}")


def pid_alive(pid: int | None, marker: bytes = b"dvpnd") -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie or a reused PID is not our daemon
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] == "Z":
        return False
    # The command line reads empty for a moment while the process execs.
    return not cmd or marker in cmd
