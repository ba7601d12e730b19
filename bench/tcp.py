"""The TCP fallback (issue 17), on a confidential lab of the harness's own: spoke-b on
`transport: auto`, its UDP dropped by the lab's router and passed again, and the hub's relay with
100 idle WebSocket spokes.

Anchors, measured in the same run: the same pair with both spokes on UDP (throughput, RTT:
measured in alternation with TCP, pair by pair); the hub relay's RSS before the 100 spokes
connect."""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import yaml

from bench.dataplane import Lab, iperf, release, rtts
from bench.stats import Figure
from dvpnd.lab import cluster as lab
from dvpnd.lab.node import wait_for as wait

HZ = 50
MANY = 100


def transport(L: Lab, spoke: str) -> str:
    st = L.ctl(spoke, "status").get("status", {})
    return str((st.get("transports") or [{}])[0].get("transport"))


def ping_ok(L: Lab, src: str, dst: str) -> bool:
    return L.run(src, "ping", "-n", "-q", "-c", "1", "-W", "1", L.ip(dst), check=False).returncode == 0


def fallback_round(L: Lab) -> tuple[float, float, int]:
    """UDP of spoke-b dropped, then passed: seconds until spoke-b talks again, seconds until it is
    back on UDP, pings lost at 50 Hz while it moves back."""
    b = L.nodes["spoke-b"]
    wait("spoke-b probing UDP", lambda: (L.ctl("spoke-b", "status")["status"]["transports"][0].get("udp_ok")
                                         is True), 30)
    t0 = time.monotonic()
    lab.block_udp(b)
    try:
        wait("spoke-b over TCP", lambda: transport(L, "spoke-b") == "tcp", 30)
        wait("spoke-b talking", lambda: ping_ok(L, "spoke-b", "spoke-a"), 30)
        down = time.monotonic() - t0
        ping = L.popen("spoke-a", "ping", "-n", "-q", "-i", str(1 / HZ), "-W", "2", "-c", str(20 * HZ),
                       L.ip("spoke-b"))
        time.sleep(1)
    finally:
        t1 = time.monotonic()
        lab.block_udp(b, on=False)
    wait("spoke-b back on UDP", lambda: transport(L, "spoke-b") == "udp", 120)
    back = time.monotonic() - t1
    out, _ = ping.communicate(timeout=120)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return down, back, int(m.group(1)) - int(m.group(2))


def idle_websockets(L: Lab, n: int, seconds: float) -> tuple[float, float, int]:
    """The hub relay's RSS (MiB) before and with `n` authenticated WebSocket spokes connected and
    idle; how many connected. The spokes are roster members made for the purpose; their client
    runs in the lab's `outside` namespace."""
    from bench.__main__ import rss_kib
    from dvpnd.roster.model import Member
    from dvpnd.wireguard.keys import encode_key, generate_private_key, public_key

    auth = lab.authority()
    old = auth.current()
    assert old is not None
    keys = [generate_private_key() for _ in range(n)]
    extra = tuple(Member(f"ws{i}", IPv4Address(int(old.network.network_address) + 100 + i),
                         encode_key(public_key(k)), encode_key(public_key(generate_private_key())))
                  for i, k in enumerate(keys))
    hub = L.nodes["hub"]
    try:
        auth.amend(old.members + extra, 3600)
        lab.publish(hub, auth.roster_file)
        path = Path(hub.config or "")
        cfg = yaml.safe_load(path.read_text())
        cfg["relay"]["max_clients_per_source"] = n + 16
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        assert L.ctl("hub", "reload")["ok"]
        time.sleep(3)  # the relay reads its new configuration
        pid = lab.relay_pid(hub)
        assert pid
        before = rss_kib(pid) / 1024
        keyfile = lab.LAB_DIR / "bench-ws-keys.json"
        keyfile.write_text(json.dumps([encode_key(k) for k in keys]))
        proc = L.popen("outside", sys.executable, "-m", "bench.wsclients", hub.public_ip, "443", str(keyfile),
                       str(seconds), lab.pubkey(hub))
        assert proc.stdout is not None
        line = proc.stdout.readline()
        connected = int(json.loads(line)["connected"]) if line.strip() else 0
        time.sleep(2)
        with_them = rss_kib(pid) / 1024
        proc.communicate(timeout=seconds + 60)
        return before, with_them, connected
    finally:
        auth.amend(old.members, 3600)
        lab.publish(hub, auth.roster_file)


def on(L: Lab, mode: str) -> None:
    """spoke-b on `transport: MODE` (udp or tcp), talking."""
    lab.set_transport(L.nodes["spoke-b"], mode)
    wait(f"spoke-b on {mode}", lambda: transport(L, "spoke-b") == mode, 30)
    wait("spoke-b talking", lambda: ping_ok(L, "spoke-b", "spoke-a"), 30)
    time.sleep(1)


def interleaved(L: Lab, pairs: int, secs: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """Throughput and RTTs with spoke-b on UDP and on TCP, in alternation (UDP, TCP, UDP, ...), so
    that the machine's drift falls on both alike."""
    tput: dict[str, list[float]] = {"udp": [], "tcp": []}
    rtt: dict[str, list[float]] = {"udp": [], "tcp": []}
    for _ in range(pairs):
        for mode in ("udp", "tcp"):
            on(L, mode)
            tput[mode].append(iperf(L, secs))
            rtt[mode] += rtts(L, 50)
    return tput["udp"], tput["tcp"], rtt["udp"], rtt["tcp"]


def run(quick: bool) -> list[Figure]:
    rounds, secs, pairs = (1, 2, 2) if quick else (3, 5, 5)
    n = 20 if quick else MANY
    L = Lab(mode="confidential")
    udp_tput, tcp_tput, udp_rtt, tcp_rtt = interleaved(L, pairs, secs)
    lab.set_transport(L.nodes["spoke-b"], "auto")
    downs, backs, lost = [], [], []
    for _ in range(rounds):
        d, bk, lo = fallback_round(L)
        downs.append(d)
        backs.append(bk)
        lost.append(float(lo))
    before, with_them, connected = idle_websockets(L, n, 4 if quick else 30)
    lab.set_transport(L.nodes["spoke-b"], "udp")
    release()
    ratios = [t / u for u, t in zip(udp_tput, tcp_tput, strict=True)]
    return [
        Figure("UDP blocked for spoke-b (transport auto): seconds until spoke-a ↔ spoke-b flows again", "s", downs,
               goal="≤ 20 s", met=max(downs) <= 20,
               note="UDP probes unanswered for 3 s, the WebSocket up, the endpoint moved"),
        Figure("UDP passed again: seconds until spoke-b is back on UDP (lab hold-down 5 s)", "s", backs,
               goal="≤ 60 s", met=max(backs) <= 60),
        Figure("pings lost at 50 Hz while spoke-b moves back to UDP", "packets", lost, goal="0", met=max(lost) == 0),
        Figure("iperf3 spoke-a → spoke-b with spoke-b on TCP", "Mbit/s", tcp_tput, "both on UDP", udp_tput,
               "≥ 0.5×", statistics.median(tcp_tput) >= 0.5 * statistics.median(udp_tput),
               f"{pairs} pairs, UDP and TCP in alternation; ratio per pair "
               f"{min(ratios):.2f}-{max(ratios):.2f}"),
        Figure("ping RTT p50 spoke-a → spoke-b with spoke-b on TCP", "ms", [statistics.median(tcp_rtt)],
               "both on UDP", [statistics.median(udp_rtt)], "≤ 1.5×",
               statistics.median(tcp_rtt) <= 1.5 * statistics.median(udp_rtt),
               f"{len(tcp_rtt)} pings each, in the same alternation"),
        Figure(f"hub relay RSS with {n} WebSocket spokes connected and idle", "MiB", [with_them],
               "no spoke connected", [before], "≤ +30 MiB", with_them - before <= 30,
               f"{connected} of {n} authenticated and held"),
    ]
