"""Data-plane figures on a lab of the harness's own: loss under churn, throughput and latency
through the firewall, the status page under load, and the hub coming back from a reboot."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.stats import Figure, percentile
from dvpnd.lab import cluster as lab
from dvpnd.serve import control
from dvpnd.wireguard.keys import encode_key

ROOT = Path(__file__).resolve().parent.parent
# --quick: a section takes the lab the one before it left when the shape fits (the full run
# starts every section on a fresh lab, so that no figure depends on what ran before it)
REUSE = False


def release() -> None:
    """A section is done with its lab."""
    if not REUSE:
        lab.down()


class Lab:
    def __init__(self, mode: str = "routed", spokes: int = 3, hubs: int = 1) -> None:
        got = lab.load_lab()
        if got is not None and not (REUSE and lab.same_shape(got, spokes, "auto", False, mode, hubs)):
            lab.down()
        # (an existing lab is checked, repaired if need be, and waited for by lab.up)
        self.nodes = {n.name: n for n in lab.up(spokes=spokes, backend="auto", mode=mode, hubs=hubs)}

    def run(self, node: str, *argv: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = dict(lab.node_env(self.nodes[node]), PYTHONPATH=str(ROOT))
        r = subprocess.run(lab.node_argv(self.nodes[node], list(argv)), capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=ROOT)
        if check and r.returncode != 0:
            raise RuntimeError(f"{node}: {' '.join(argv)}: {r.stderr[-500:]}")
        return r

    def popen(self, node: str, *argv: str) -> subprocess.Popen[str]:
        env = dict(lab.node_env(self.nodes[node]), PYTHONPATH=str(ROOT))
        return subprocess.Popen(lab.node_argv(self.nodes[node], list(argv)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def ctl(self, node: str, cmd: str) -> dict[str, Any]:
        return control.request(Path(self.nodes[node].dir) / "control.sock", cmd)

    def ip(self, node: str) -> str:
        return self.nodes[node].overlay_ip or ""

    def set_firewall(self, enabled: bool) -> None:
        for n in ("hub", "spoke-a", "spoke-b"):
            path = Path(self.nodes[n].config or "")
            cfg = yaml.safe_load(path.read_text())
            cfg.setdefault("firewall", {})["enabled"] = enabled
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            assert self.ctl(n, "reload")["ok"]


def ping_summary(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def churn_loss(L: Lab, quick: bool) -> Figure:
    reloads = applies = 10 if quick else 100
    hub = L.nodes["hub"]
    ping = L.popen("spoke-a", "ping", "-n", "-q", "-i", "0.01", "-W", "2", "-w", "600", L.ip("spoke-b"))
    time.sleep(1)
    extra = Path(hub.dir) / "peers.d" / "bench-churn.yaml"
    for i in range(reloads):
        if i % 2 == 0:
            extra.write_text(yaml.safe_dump({"public_key": encode_key(os.urandom(32)), "address": "10.88.0.200"}))
        else:
            extra.unlink()
        assert L.ctl("hub", "reload")["ok"]
    extra.unlink(missing_ok=True)
    L.ctl("hub", "reload")
    pid = lab.read_pid(hub)
    assert pid
    os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    lab.start_daemon(hub)
    lab.wait_ready(hub)
    for _ in range(applies):
        for n in ("hub", "spoke-a", "spoke-b"):
            assert L.ctl(n, "firewall-apply")["ok"]
    time.sleep(1)
    ping.send_signal(signal.SIGINT)  # ping counts a packet only when its reply is due; -W 2 lets it wait
    out, _ = ping.communicate(timeout=30)
    sent, received = ping_summary(out)
    # A packet sent in the last 10 ms before SIGINT may still be in flight and counted lost.
    lost = max(0, sent - received - 1)
    return Figure(f"packets lost at 100 Hz during {reloads} reloads, a kill -9 + restart, {applies}×3 firewall "
                  "applies", "packets", [lost], goal="0", met=lost == 0,
                  note=f"{received}/{sent} replies (the last in-flight packet not counted)")


def iperf(L: Lab, seconds: int) -> float:
    srv = L.popen("spoke-b", "iperf3", "-s", "-1")
    time.sleep(0.5)
    try:
        out = L.run("spoke-a", "iperf3", "-c", L.ip("spoke-b"), "-t", str(seconds), "-J").stdout
    finally:
        srv.communicate(timeout=30)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6


def rtts(L: Lab, count: int) -> list[float]:
    out = L.run("spoke-a", "ping", "-n", "-i", "0.01", "-c", str(count), L.ip("spoke-b")).stdout
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


def firewall_cost(L: Lab, quick: bool) -> list[Figure]:
    secs, rounds = (2, 1) if quick else (5, 5)
    on, off, rtt_on, rtt_off = [], [], [], []
    for _ in range(rounds):
        on.append(iperf(L, secs))
        rtt_on += rtts(L, 50 if quick else 200)
        L.set_firewall(False)
        off.append(iperf(L, secs))
        rtt_off += rtts(L, 50 if quick else 200)
        L.set_firewall(True)
    thr = statistics.median(on) / statistics.median(off)
    pairs = sorted(a / b for a, b in zip(on, off, strict=True))
    p50_on, p50_off = percentile(rtt_on, 50), percentile(rtt_off, 50)
    return [
        Figure("iperf3 spoke-a → hub → spoke-b, with dvpn's firewall", "Mbit/s", on,
               "no dvpn table", off, "≥ 0.97×", thr >= 0.97,
               f"{rounds} interleaved pairs (table on, then off); the pairs' ratios "
               f"{pairs[0]:.2f}–{pairs[-1]:.2f}, their median {statistics.median(pairs):.2f}×"),
        Figure("ping RTT p50 through the hub, with firewall", "ms", [p50_on], "without", [p50_off],
               "≤ 1.05×", p50_on / p50_off <= 1.05, f"{len(rtt_on)} pings each"),
    ]


def status_load(L: Lab, quick: bool) -> list[Figure]:
    target = lab.find_node("spoke-a").public_ip
    secs = 2 if quick else 5
    anchor = []
    for _ in range(20):
        t0 = time.perf_counter()
        L.run("spoke-a", "wg", "show", "wg0", "dump")
        anchor.append(time.perf_counter() - t0)
    figs = []
    best = 0.0
    for rate in ([200, 1000] if quick else [200, 1000, 2000, 3000, 5000]):
        r = json.loads(L.run("outside", sys.executable, "-m", "bench.loadgen", target, "8000", "/status",
                             str(rate), str(secs)).stdout)
        if rate in (200, 1000):
            met = r["p50"] <= 0.2 * statistics.median(anchor) and r["errors"] == 0
            figs.append(Figure(f"/status p50 at {rate} req/s", "s", [r["p50"]],
                               "one exec of wg show wg0 dump", anchor, "p50 ≤ 0.2×", met,
                               f"p99 {r['p99'] * 1000:.1f} ms, {r['errors']} errors, "
                               f"{r['achieved_rps']:.0f} req/s answered; the generator issued requests "
                               f"{r['issue_lag_p50'] * 1000:.2f} ms after their due time (median), not counted "
                               f"(counted, the p50 would be about {r['p50_with_lag'] * 1000:.2f} ms)"))
        if r["p99"] <= 0.005 and r["errors"] == 0:
            best = max(best, rate)
    figs.append(Figure("highest /status rate with p99 ≤ 5 ms", "req/s", [best], note="rates tried: "
                       + ("200, 1000" if quick else "200, 1000, 2000, 3000, 5000")))
    return figs


def handshakes(L: Lab) -> dict[str, int]:
    r = L.run("hub", "wg", "show", "wg0", "latest-handshakes", check=False)  # wg0 may not exist yet
    return {k: int(v) for k, v in (ln.split("\t") for ln in r.stdout.splitlines())} if r.returncode == 0 else {}


PAIRS = (("spoke-a", "spoke-b"), ("spoke-b", "spoke-c"), ("spoke-c", "spoke-a"))


def wait_recovered(L: Lab, since: float, t0: float, cap: float, busy: bool) -> float:
    """Seconds from t0 until the hub has a fresh handshake with every spoke and traffic passes."""
    while time.monotonic() - t0 < cap:
        hs = handshakes(L)
        if len(hs) == 3 and all(v >= since for v in hs.values()):
            if all(L.run(a, "ping", "-n", "-c", "1", "-W", "1", L.ip(b), check=False).returncode == 0
                   for a, b in PAIRS):
                return time.monotonic() - t0
        time.sleep(0.1 if busy else 0.25)
    return float("inf")


def busy_traffic(L: Lab) -> list[subprocess.Popen[str]]:
    return [L.popen(a, "ping", "-n", "-q", "-i", "0.2", "-w", "400", L.ip(b)) for a, b in PAIRS]


def reboot_dvpnd(L: Lab, busy: bool, cap: float) -> float:
    hub = L.nodes["hub"]
    pid = lab.read_pid(hub)
    assert pid
    os.kill(pid, signal.SIGKILL)
    L.run("hub", "ip", "link", "del", "wg0")
    load = busy_traffic(L) if busy else []
    time.sleep(3)
    since = int(time.time())
    t0 = time.monotonic()
    lab.start_daemon(hub)
    took = wait_recovered(L, since, t0, cap, busy)
    for p in load:
        p.kill()
        p.communicate()
    return took


def reboot_plain(L: Lab, busy: bool, cap: float, conf: Path) -> float:
    """The same topology on plain wg: the hub's config has its spokes but, as with wg-quick, no endpoints."""
    L.run("hub", "ip", "link", "del", "wg0", check=False)
    load = busy_traffic(L) if busy else []
    time.sleep(3)
    since = int(time.time())
    t0 = time.monotonic()
    L.run("hub", "sh", "-c", "wireguard-go wg0 >/dev/null 2>&1")
    L.run("hub", "wg", "setconf", "wg0", str(conf))
    L.run("hub", "ip", "addr", "add", "10.88.0.1/24", "dev", "wg0")
    L.run("hub", "ip", "link", "set", "wg0", "up")
    took = wait_recovered(L, since, t0, cap, busy)
    for p in load:
        p.kill()
        p.communicate()
    return took


def hub_reboot(L: Lab, quick: bool) -> list[Figure]:
    cap = 10.0 if quick else 240.0  # (--quick: plain wg's figure is the cap, whatever it is)
    rounds = 1 if quick else 2
    figs = []
    results: dict[str, dict[str, list[float]]] = {"dvpnd": {"idle": [], "busy": []}, "plain": {"idle": [], "busy": []}}
    for _ in range(rounds):
        for mode in ("idle", "busy"):
            time.sleep(2)
            results["dvpnd"][mode].append(reboot_dvpnd(L, mode == "busy", cap))
            lab.wait_ready(L.nodes["hub"])
    # Plain wg: every dvpnd stops (their devices stay configured, as wg-quick would leave them).
    hub = L.nodes["hub"]
    private = (Path(hub.state_dir or "") / "private.key").read_text().strip()
    peers = L.run("hub", "wg", "show", "wg0", "allowed-ips").stdout.splitlines()
    conf = Path(hub.dir) / "plain-wg0.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {private}\nListenPort = 51820\n\n" + "".join(
        f"[Peer]\nPublicKey = {ln.split()[0]}\nAllowedIPs = {ln.split()[1]}\n\n" for ln in peers))
    os.chmod(conf, 0o600)
    for n in ("hub", "spoke-a", "spoke-b", "spoke-c"):
        lab.stop_daemon(L.nodes[n])
    for _ in range(rounds):
        for mode in ("idle", "busy"):
            time.sleep(2)
            results["plain"][mode].append(reboot_plain(L, mode == "busy", cap, conf))
    conf.unlink()
    L.run("hub", "ip", "link", "del", "wg0", check=False)
    lab.up(spokes=3, backend="auto")  # dvpnd back everywhere
    for mode in ("idle", "busy"):
        ours, plain = results["dvpnd"][mode], results["plain"][mode]
        shown = [min(v, cap) for v in plain]
        unrecovered = any(v == float("inf") for v in plain)
        note = f"plain wg capped at {cap:.0f} s" + (" (not recovered by then)" if unrecovered else "")
        figs.append(Figure(f"hub back from a reboot, spokes {mode}: every spoke passing traffic", "s",
                           ours, "plain wg, keepalive 25", shown, "≤ 10 s", statistics.median(ours) <= 10, note))
    return figs


def run(quick: bool) -> list[Figure]:
    L = Lab()
    figs = [churn_loss(L, quick)]
    figs += firewall_cost(L, quick)
    figs += status_load(L, quick)
    figs += hub_reboot(L, quick)
    return figs
