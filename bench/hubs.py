"""Two hubs (issue 16), on a confidential lab of the harness's own with `--hubs 2`.

Anchors, measured in the same run:
- plain WireGuard with the same two hub peers and nobody switching: dvpnd stopped on the
  spokes (their devices stay as dvpnd left them), the preferred hub killed the same way; the
  traffic stays on the dead hub until a person moves the endpoints, so the loss is the whole
  window after the kill;
- one hub (the same confidential lab with `--hubs 1`) for the steady-state cost per spoke.

"Killed" is a dead droplet as the spokes see it: the hub namespace's link down, its dvpnd and
wireguard-go killed with SIGKILL; it comes back from its state directory.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time

from bench.dataplane import ROOT, Lab, release
from bench.stats import Figure
from dvpnd.lab import cluster as lab
from dvpnd.lab.node import wait_for as wait

HZ = 100
PROBE = str(ROOT / "tests" / "lab" / "probe.py")


def kill_hub(L: Lab, name: str = "hub") -> None:
    lab.kill_hard(L.nodes[name])


def revive_hub(L: Lab, name: str = "hub") -> None:
    lab.revive(L.nodes[name])


def in_use(L: Lab, spoke: str) -> str | None:
    hubs = L.ctl(spoke, "status").get("status", {}).get("hubs", [])
    return next((h["name"] for h in hubs if h["in_use"]), None)


def _lost(proc: object) -> tuple[int, int]:
    out, _ = proc.communicate(timeout=120)  # type: ignore[attr-defined]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def both_on_hub(L: Lab) -> None:
    """Wait until spoke-a and spoke-b reach each other through the preferred hub (after a
    failback the second spoke follows a moment later), so that each round starts alike."""
    def on_hub(src: str, dst: str) -> bool:
        key = L.run(dst, sys.executable, "-m", "dvpnd.cli", "pubkey", "--overlay", "--config",
                    str(L.nodes[dst].config)).stdout.strip()
        return f"{key}\t10.89." in L.run(src, "wg", "show", "wg0", "endpoints").stdout

    wait("spoke-a and spoke-b on hub", lambda: on_hub("spoke-a", "spoke-b") and on_hub("spoke-b", "spoke-a"), 30)


def failover_round(L: Lab, seconds: float = 8) -> tuple[float, float, bool]:
    """One kill and one return of the preferred hub with pings at 100 Hz and a TCP stream:
    (seconds lost at the kill, seconds lost at the return, whether the stream survived)."""
    both_on_hub(L)
    echo = L.popen("spoke-b", sys.executable, PROBE, "echo", "7779", "90")
    assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
    stream = L.popen("spoke-a", sys.executable, PROBE, "stream", L.ip("spoke-b"), "7779", str(2 * seconds + 12))
    assert stream.stdout is not None and stream.stdout.readline().strip() == "connected"
    count = str(int(seconds * HZ))
    ping = L.popen("spoke-a", "ping", "-n", "-q", "-i", str(1 / HZ), "-W", "2", "-c", count, L.ip("spoke-b"))
    time.sleep(2)
    kill_hub(L)
    sent, got = _lost(ping)
    down = (sent - got) / HZ
    ping = L.popen("spoke-a", "ping", "-n", "-q", "-i", str(1 / HZ), "-W", "2", "-c", count, L.ip("spoke-b"))
    revive_hub(L)
    wait("spoke-a back on hub", lambda: in_use(L, "spoke-a") == "hub", 30)
    sent, got = _lost(ping)
    back = (sent - got) / HZ
    out, _ = stream.communicate(timeout=120)
    echo.kill()
    echo.communicate(timeout=10)
    r = json.loads(out)
    return down, back, r["error"] is None and r["echoed"] == r["sent"] > 0


def plain_wireguard_round(L: Lab, seconds: float = 8) -> float:
    """The anchor: the spokes' dvpnd stopped (plain WireGuard, both hub peers, nobody switching)."""
    spokes = [n for n in L.nodes.values() if n.role == "spoke"]
    both_on_hub(L)
    for n in spokes:
        lab.stop_daemon(n)
    try:
        ping = L.popen("spoke-a", "ping", "-n", "-q", "-i", str(1 / HZ), "-W", "2", "-c", str(int(seconds * HZ)),
                       L.ip("spoke-b"))
        time.sleep(2)
        kill_hub(L)
        sent, got = _lost(ping)
        return (sent - got) / HZ
    finally:
        revive_hub(L)
        for n in spokes:
            lab.start_daemon(n)
            lab.wait_ready(n)
        lab.wait_handshakes_done(list(L.nodes.values()), 60)


def steady(L: Lab, seconds: int, settle: int = 20) -> tuple[float, float, float]:
    """spoke-a idle: RSS of dvpnd (MiB), CPU of dvpnd + its wireguard-go (% of a core), bytes/s on
    its public link (in + out)."""
    from bench.__main__ import cpu_ticks, rss_kib

    node = L.nodes["spoke-a"]

    def nbytes() -> int:
        return sum(int(L.run("spoke-a", "cat", f"/sys/class/net/eth0/statistics/{k}_bytes").stdout)
                   for k in ("rx", "tx"))

    time.sleep(settle)
    # (the processes as they are once settled: a wireguard-go of the section before may just have gone)
    pids = [p for p in [lab.read_pid(node), *lab.wg_go_pids(node)] if p]
    b0, c0, t0 = nbytes(), sum(cpu_ticks(p) for p in pids), time.monotonic()
    time.sleep(seconds)
    b1, c1, t1 = nbytes(), sum(cpu_ticks(p) for p in pids), time.monotonic()
    rss = rss_kib(pids[0]) / 1024
    return rss, (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0) * 100, (b1 - b0) / (t1 - t0)


def run(quick: bool) -> list[Figure]:
    rounds, idle, settle = (1, 5, 3) if quick else (3, 60, 20)
    one = steady(Lab(mode="confidential"), idle, settle)
    L = Lab(mode="confidential", hubs=2)
    two = steady(L, idle, settle)
    downs, backs, survived = [], [], []
    seconds = 5 if quick else 8
    for _ in range(rounds):
        d, b, s = failover_round(L, seconds)
        downs.append(d)
        backs.append(b)
        survived.append(1.0 if s else 0.0)
    plain = [plain_wireguard_round(L, seconds) for _ in range(1 if quick else 2)]
    release()
    return [
        Figure("preferred hub killed: ping loss spoke-a → spoke-b at 100 Hz", "s", downs,
               f"plain WireGuard, the same two hub peers, nobody switching (loss in the {seconds - 2} s after "
               "the kill)", plain,
               "≤ 3 s, goal 1 s", statistics.median(downs) <= 3,
               "detection is probe.window (1 s) at most; plain WireGuard stays on the dead hub until a person acts"),
        Figure("preferred hub back (after the hold-down, lab: 3 s): ping loss at the failback", "s", backs,
               goal="0", met=max(backs) == 0),
        Figure("a TCP stream (1 KB every 10 ms, echoed) across the failover and the failback", "survived", survived,
               goal="survives, no reset", met=min(survived) == 1),
        Figure("idle spoke with two hubs: RSS of dvpnd", "MiB", [two[0]], "one hub", [one[0]], "≤ 1.1×",
               two[0] <= 1.1 * one[0]),
        Figure("idle spoke with two hubs: CPU of dvpnd + wireguard-go", "% of a core", [two[1]], "one hub",
               [one[1]], "≤ 2 % of a core (README's budget)", two[1] <= 2,
               f"{idle} s; the probes: 10 echoes/s out, as many answered"),
        Figure("idle spoke with two hubs: bytes/s on its public link, in + out", "bytes/s", [two[2]], "one hub",
               [one[2]], "≤ 4 KB/s (README's budget: about 2 KB/s each way)", two[2] <= 4096,
               "probes and answers, both transits' keepalives, the roster's held polls"),
    ]

