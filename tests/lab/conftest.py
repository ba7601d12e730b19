"""A real lab for the integration tests: namespaces, wireguard-go, nftables, dvpnd.

The lab gets its own directory and namespace prefix so it never meets a lab a developer
has up, and it is removed at the end of the session whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["DVPN_LAB_DIR"] = "/run/dvpn-test-lab"
os.environ["DVPN_LAB_PREFIX"] = "dvpnt-"

from dvpnd.lab import cluster as lab
from dvpnd.lab.node import wait_for
from dvpnd.serve import control

PROBE = str(Path(__file__).with_name("probe.py"))
NEEDS = ("ip", "nft", "wireguard-go", "wg", "ping", "ss")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, wireguard-go)"
    gone = [t for t in NEEDS if shutil.which(t) is None]
    if gone:
        return f"needs {', '.join(gone)} (run .ci/run or install them)"
    try:
        import nftables  # noqa: F401
    except ImportError:
        return "needs the nftables Python binding"
    return None


class Lab:
    def __init__(self, nodes: list[lab.Node]):
        self.nodes = {n.name: n for n in nodes}

    def run(self, node: str, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = lab.run_in(self.nodes[node], list(argv), check=False, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{node}: {' '.join(argv)} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def nft_file(self, node: str, ruleset: str) -> None:
        """Load an nftables ruleset file in the node (`nft -f`)."""
        f = Path(self.nodes[node].dir) / "test-ruleset.nft"
        f.write_text(ruleset + "\n")
        try:
            self.run(node, "nft", "-f", str(f))
        finally:
            f.unlink()

    def popen(self, node: str, *argv: str) -> subprocess.Popen[str]:
        n = self.nodes[node]
        return subprocess.Popen(lab.node_argv(n, list(argv)), env=lab.node_env(n), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def dvpnctl(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(node, sys.executable, "-m", "dvpnd.cli", *args, check=check)

    def status(self, node: str) -> dict[str, Any]:
        return control.request(Path(self.nodes[node].dir) / "control.sock", "status")["status"]  # type: ignore[no-any-return]

    def request(self, node: str, cmd: str) -> dict[str, Any]:
        return control.request(Path(self.nodes[node].dir) / "control.sock", cmd)

    def wg_peers(self, node: str) -> dict[str, dict[str, str]]:
        """`wg show wg0 dump` in the node: public key -> fields."""
        out = self.run(node, "wg", "show", "wg0", "dump").stdout.strip().splitlines()[1:]
        peers = {}
        for line in out:
            f = line.split("\t")
            peers[f[0]] = {"endpoint": f[2], "allowed_ips": f[3], "latest_handshake": f[4]}
        return peers

    def pid(self, node: str) -> int:
        pid = lab.read_pid(self.nodes[node])
        assert pid is not None
        return pid

    def wg_go_pid(self, node: str) -> int | None:
        return lab.wg_go_pid(self.nodes[node])

    def ip(self, node: str) -> str:
        ip = self.nodes[node].overlay_ip
        assert ip is not None
        return ip

    def public(self, node: str) -> str:
        return self.nodes[node].public_ip

    def tcp(self, src: str, host: str, *ports: int, timeout: float = 1.0) -> dict[int, str]:
        r = self.run(src, sys.executable, PROBE, "tcp", host, *map(str, ports), "--timeout", str(timeout))
        return {int(k): v for k, v in json.loads(r.stdout).items()}

    def ping(self, src: str, dst: str, count: int = 3, interval: float = 0.2) -> bool:
        return self.run(src, "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1", dst,
                        check=False).returncode == 0

    def wait(self, what: str, cond: Any, timeout: float = 30, step: float = 0.25) -> Any:
        return wait_for(what, cond, timeout, step)


def rss_kib(pid: int) -> int:
    """A process's resident memory (KiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class Pinger:
    """A 50 Hz ping in a node, run to completion so no packet is left in flight."""

    def __init__(self, lab_: Lab, src: str, dst: str, seconds: float, hz: int = 50):
        self.count = int(seconds * hz)
        self.proc = lab_.popen(src, "ping", "-n", "-q", "-i", str(1 / hz), "-W", "2", "-c", str(self.count), dst)

    def result(self) -> tuple[int, int]:
        out, _ = self.proc.communicate(timeout=120)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, out
        return int(m.group(1)), int(m.group(2))


class Listener:
    def __init__(self, lab_: Lab, node: str, *ports: int):
        self.proc = lab_.popen(node, sys.executable, PROBE, "listen", *map(str, ports))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", (line, self.proc.stderr.read() if self.proc.stderr else "")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=10)


@pytest.fixture(scope="session")
def the_lab() -> Iterator[None]:
    """One lab for the whole session, removed at the end whatever happened."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    lab.down()  # a lab left by an interrupted run
    try:
        yield
    finally:
        lab.down()


def ensure_lab(postgres: bool, mode: str = "routed", hubs: int = 1) -> Lab:
    """The lab, checked healthy (every daemon running, every peer up), in the shape asked for."""
    existing = lab.load_lab()
    if existing is not None and (bool(existing[1].get("postgres")) != postgres
                                 or existing[1].get("mode", "routed") != mode
                                 or int(existing[1].get("hubs", 1)) != hubs):
        lab.down()
    return Lab(lab.up(spokes=3, backend="auto", postgres=postgres, mode=mode, hubs=hubs))


@pytest.fixture
def L(the_lab: None) -> Lab:
    return ensure_lab(postgres=False)


@pytest.fixture
def C(the_lab: None) -> Lab:
    """The lab in confidential mode (the default of `dvpnctl lab up`)."""
    return ensure_lab(postgres=False, mode="confidential")


@pytest.fixture
def H(the_lab: None) -> Lab:
    """The confidential lab with two hubs (hub, preferred, and hub-b)."""
    return ensure_lab(postgres=False, mode="confidential", hubs=2)


@pytest.fixture
def PG(the_lab: None) -> Lab:
    """The lab with PostgreSQL 15 on the spokes: spoke-a primary, spoke-b and spoke-c replicas."""
    if not Path("/usr/lib/postgresql/15/bin/postgres").exists():
        pytest.skip("needs postgresql-15 (run .ci/run or ./dev setup)")
    return ensure_lab(postgres=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed lab test's report carries the end of every node's dvpnd log (timestamped), so a
    failure in CI can be read without the lab, which is gone by then."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.when != "call" or not rep.failed:
        return
    got = lab.load_lab()
    for n in got[0] if got else ():
        log = Path(n.dir) / "dvpnd.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-40:]
            rep.sections.append((f"{n.name}: the end of dvpnd.log", "\n".join(tail)))
