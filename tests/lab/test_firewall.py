"""The firewall promises, proven from outside in the lab.

Each probe is recorded in PROBES (who -> whom, port, expected, seen); run with `-s` to see
the matrix printed at the end of the module.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dvpnd.firewall.ruleset import normalize_listing
from tests.lab.conftest import PROBE, Lab, Listener, Pinger

pytestmark = [pytest.mark.root, pytest.mark.slow]

PROBES: list[tuple[str, str, str, str, str]] = []
COMMON_PORTS = (22, 80, 443, 3000, 5432, 8080)


@pytest.fixture(scope="module", autouse=True)
def print_matrix() -> Iterator[None]:
    yield
    if PROBES:
        print("\n\nprobe matrix (who -> whom, port, expected, seen)")
        for row in PROBES:
            print("  {:<8} -> {:<22} {:<10} expected {:<8} seen {}".format(*row))


def expect(L: Lab, src: str, host: str, label: str, want: dict[int, str]) -> None:
    seen = L.tcp(src, host, *want)
    for port, exp in want.items():
        PROBES.append((src, f"{label} ({host})", f"tcp/{port}", exp, seen[port]))
    assert seen == want, f"{src} -> {host}: expected {want}, seen {seen}"


def listening_ports(L: Lab, node: str) -> set[int]:
    out = L.run(node, "ss", "-Htln").stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def table(L: Lab, node: str) -> object:
    return normalize_listing(json.loads(L.run(node, "nft", "-j", "list", "table", "inet", "dvpn").stdout))


def counter(L: Lab, node: str, chain: str | None = None, comment: str | None = None) -> int:
    """Packets counted by dvpn's drop rules in `chain`, or by the rule with `comment`."""
    data = json.loads(L.run(node, "nft", "-j", "list", "table", "inet", "dvpn").stdout)["nftables"]
    total = 0
    for item in data:
        r = item.get("rule")
        if r and (r["chain"] == chain or (comment is not None and r.get("comment") == comment)):
            total += sum(e["counter"]["packets"] for e in r["expr"] if "counter" in e)
    return total


def test_outside_reaches_only_the_status_port_of_a_spoke(L: Lab) -> None:
    lst = Listener(L, "spoke-a", *COMMON_PORTS)
    try:
        ports = listening_ports(L, "spoke-a")
        assert ports >= {8000, *COMMON_PORTS}
        expect(L, "outside", L.public("spoke-a"), "spoke-a public",
               {p: "open" if p == 8000 else "timeout" for p in sorted(ports)})
        expect(L, "outside", L.ip("spoke-a"), "spoke-a overlay", {8000: "timeout", 22: "timeout"})
    finally:
        lst.stop()
    body = L.run("outside", "curl", "-s", "-m", "3", f"http://{L.public('spoke-a')}:8000/status").stdout
    assert json.loads(body)["node"] == "spoke-a"


def test_outside_reaches_only_wireguard_and_configured_ports_on_the_hub(L: Lab) -> None:
    # (443 is the lab hub's relay, the TCP fallback, which its firewall opens)
    lst = Listener(L, "hub", *(p for p in COMMON_PORTS if p != 443))
    try:
        ports = listening_ports(L, "hub") | {8000}
        assert 443 in ports
        # The hub as in production (etc/hub.yaml): 22/TCP, and 443 with relay.enabled; its
        # status page is on 127.0.0.1 and 8000 shows nothing from outside, listener or not
        # (regression: the lab's hub showed its page to the Internet).
        expect(L, "outside", L.public("hub"), "hub public",
               {p: "open" if p in (22, 443) else "timeout" for p in sorted(ports)})
    finally:
        lst.stop()
    # UDP 51820 answers: every spoke's handshake came in through it.
    assert all(p["state"] == "up" for p in L.status("hub")["peers"])


def test_the_hub_originates_nothing_into_the_overlay(L: Lab) -> None:
    before = counter(L, "hub", comment="the hub originates nothing into the overlay")
    assert not L.ping("hub", L.ip("spoke-a"), count=2)
    expect(L, "hub", L.ip("spoke-a"), "spoke-a overlay", {8000: "timeout", 22: "timeout"})
    PROBES.append(("hub", f"spoke-a overlay ({L.ip('spoke-a')})", "icmp", "blocked", "blocked"))
    assert counter(L, "hub", comment="the hub originates nothing into the overlay") >= before + 4


def test_a_spoke_drops_the_hubs_address_even_without_the_hubs_policy(L: Lab) -> None:
    """Defence in depth: with the hub's table gone, packets from 10.88.0.1 still die at the spoke."""
    hub_pid = L.pid("hub")
    expected = table(L, "hub")
    os.kill(hub_pid, signal.SIGSTOP)
    try:
        L.run("hub", "nft", "delete", "table", "inet", "dvpn")
        before = counter(L, "spoke-a", comment="nothing from the hub")
        assert not L.ping("hub", L.ip("spoke-a"), count=2)
        assert counter(L, "spoke-a", comment="nothing from the hub") >= before + 2
        PROBES.append(("hub", "spoke-a overlay (no hub table)", "icmp", "blocked", "blocked at spoke"))
    finally:
        os.kill(hub_pid, signal.SIGCONT)
    # Drift: the deleted table comes back as rendered.
    L.wait("the hub's table restored", lambda: L.run("hub", "nft", "list", "table", "inet", "dvpn",
                                                      check=False).returncode == 0, timeout=20)
    assert table(L, "hub") == expected


def test_a_rule_added_by_hand_is_reverted(L: Lab) -> None:
    expected = table(L, "spoke-b")
    lst = Listener(L, "spoke-b", 22)
    try:
        L.run("spoke-b", "nft", "insert", "rule", "inet", "dvpn", "input", "tcp", "dport", "22", "accept")
        assert L.tcp("outside", L.public("spoke-b"), 22) == {22: "open"}
        L.wait("the hand edit reverted", lambda: L.tcp("outside", L.public("spoke-b"), 22, timeout=0.5)
               == {22: "timeout"}, timeout=20)
        assert table(L, "spoke-b") == expected
    finally:
        lst.stop()


def test_spokes_reach_every_port_of_each_other_by_default(L: Lab) -> None:
    lst = Listener(L, "spoke-b", 22, 5432, 6000)
    try:
        expect(L, "spoke-a", L.ip("spoke-b"), "spoke-b overlay",
               {22: "open", 5432: "open", 6000: "open", 8000: "open"})
    finally:
        lst.stop()


def _set_spoke_config(L: Lab, node: str, **firewall: object) -> str:
    path = Path(L.nodes[node].config or "")
    old = path.read_text()
    cfg = yaml.safe_load(old)
    cfg["firewall"] = dict(cfg.get("firewall") or {}, **firewall)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert L.dvpnctl(node, "reload").returncode == 0
    return old


def test_overlay_ports_narrowed_by_config(L: Lab) -> None:
    old = _set_spoke_config(L, "spoke-b", overlay_tcp_ports=[5432])
    lst = Listener(L, "spoke-b", 22, 5432, 6000)
    try:
        expect(L, "spoke-a", L.ip("spoke-b"), "spoke-b overlay [5432]",
               {22: "timeout", 5432: "open", 6000: "timeout"})
        assert L.ping("spoke-a", L.ip("spoke-b"), count=1)
    finally:
        lst.stop()
        Path(L.nodes["spoke-b"].config or "").write_text(old)
        L.dvpnctl("spoke-b", "reload")


def test_no_path_between_the_overlay_and_the_internet_through_the_hub(L: Lab) -> None:
    """A spoke that routes Internet traffic into the tunnel gets nothing through; nor does outside into the overlay."""
    spoke_pid = L.pid("spoke-a")
    hub_key = L.run("spoke-a", "wg", "show", "wg0", "peers").stdout.strip()
    L.nft_file("outside", "table ip probe {\n chain input {\n type filter hook input priority 0;\n"
                          " ip saddr 10.88.0.0/24 counter\n }\n}")
    os.kill(spoke_pid, signal.SIGSTOP)  # so dvpnd does not undo the test's change at once
    try:
        L.run("spoke-a", "wg", "set", "wg0", "peer", hub_key, "allowed-ips", "10.88.0.0/24,203.0.113.0/24")
        L.run("spoke-a", "ip", "route", "add", "203.0.113.10/32", "dev", "wg0")
        L.run("router", "ip", "route", "add", "10.88.0.0/24", "via", L.public("hub"))
        before = counter(L, "hub", chain="forward")
        assert not L.ping("spoke-a", "203.0.113.10", count=3)
        assert not L.ping("outside", L.ip("spoke-b"), count=3)
        seen = json.loads(L.run("outside", "nft", "-j", "list", "table", "ip", "probe").stdout)
        arrived = sum(e["counter"]["packets"] for item in seen["nftables"] if "rule" in item
                      for e in item["rule"]["expr"] if "counter" in e)
        assert arrived == 0
        assert counter(L, "hub", chain="forward") >= before + 6
        PROBES.append(("spoke-a", "outside via hub (203.0.113.10)", "icmp", "blocked", "blocked at hub"))
        PROBES.append(("outside", "spoke-b overlay via hub", "icmp", "blocked", "blocked at hub"))
    finally:
        L.run("router", "ip", "route", "del", "10.88.0.0/24", check=False)
        L.run("spoke-a", "ip", "route", "del", "203.0.113.10/32", check=False)
        L.run("outside", "nft", "delete", "table", "ip", "probe", check=False)
        os.kill(spoke_pid, signal.SIGCONT)
        L.dvpnctl("spoke-a", "reload")
    assert L.wg_peers("spoke-a")[hub_key]["allowed_ips"] == "10.88.0.0/24"


def test_foreign_tables_a_second_tunnel_and_a_bridged_container_are_untouched(L: Lab) -> None:
    """Stand-ins for Docker (a nat table, a bridge, a container namespace) and Dstack's dstack-wg0."""
    node = L.nodes["spoke-c"]
    ctr = node.netns.replace("spoke-c", "ctr")
    foreign = """table ip dockerish {
  chain forward { type filter hook forward priority 0; policy accept; iifname "br-ctr" accept; }
  chain post { type nat hook postrouting priority 100; ip saddr 172.30.0.0/24 oifname "eth0" masquerade; }
}"""
    key_file = Path(node.dir) / "dstack.key"
    key_file.write_text(L.run("spoke-c", "wg", "genkey").stdout)
    os.chmod(key_file, 0o600)
    try:
        L.nft_file("spoke-c", foreign)
        L.run("spoke-c", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        # Its output must not go to our pipe: the daemonized child would die of SIGPIPE.
        L.run("spoke-c", "sh", "-c", "wireguard-go dstack-wg0 >/dev/null 2>&1")
        L.run("spoke-c", "wg", "set", "dstack-wg0", "listen-port", "9182", "private-key", str(key_file))
        L.run("spoke-c", "ip", "link", "add", "br-ctr", "type", "bridge")
        L.run("spoke-c", "ip", "addr", "add", "172.30.0.1/24", "dev", "br-ctr")
        L.run("spoke-c", "ip", "link", "set", "br-ctr", "up")
        os.system(f"ip netns add {ctr}")
        L.run("spoke-c", "ip", "link", "add", "veth-ctr", "type", "veth", "peer", "name", "eth0", "netns", ctr)
        L.run("spoke-c", "ip", "link", "set", "veth-ctr", "master", "br-ctr", "up")
        for cmd in ("ip link set lo up", "ip link set eth0 up", "ip addr add 172.30.0.2/24 dev eth0",
                    "ip route add default via 172.30.0.1"):
            assert os.system(f"ip netns exec {ctr} {cmd}") == 0, cmd

        def ctr_ping() -> bool:
            return os.system(f"ip netns exec {ctr} ping -n -q -c 2 -i 0.2 -W 1 203.0.113.10 >/dev/null") == 0

        def snapshot() -> tuple[object, str]:
            t = json.loads(L.run("spoke-c", "nft", "-j", "list", "table", "ip", "dockerish").stdout)
            return normalize_listing(t), L.run("spoke-c", "wg", "show", "dstack-wg0", "dump").stdout

        assert ctr_ping(), "the container reaches the Internet through the bridge before dvpn re-applies"
        before = snapshot()
        for _ in range(3):
            assert L.dvpnctl("spoke-c", "firewall", "apply").returncode == 0
        assert L.dvpnctl("spoke-c", "reload").returncode == 0
        assert snapshot() == before
        assert ctr_ping(), "the container's forwarded traffic survives dvpn's table"
        PROBES.append(("ctr", "outside via spoke-c bridge", "icmp", "pass", "pass"))
        assert "dstack-wg0" in L.run("spoke-c", "ip", "-br", "link").stdout
    finally:
        os.system(f"ip netns del {ctr} 2>/dev/null")
        L.run("spoke-c", "ip", "link", "del", "br-ctr", check=False)
        L.run("spoke-c", "ip", "link", "del", "dstack-wg0", check=False)
        L.run("spoke-c", "nft", "delete", "table", "ip", "dockerish", check=False)
        L.run("spoke-c", "sysctl", "-q", "-w", "net.ipv4.ip_forward=0", check=False)
        key_file.unlink(missing_ok=True)


def test_a_hundred_reapplies_never_open_or_close_anything(L: Lab) -> None:
    lst_a = Listener(L, "spoke-a", 22)
    lst_b = Listener(L, "spoke-b", 5432)
    stop = Path(L.nodes["outside"].dir) / "stop-hammers"
    stop.unlink(missing_ok=True)
    try:
        ping = Pinger(L, "spoke-a", L.ip("spoke-b"), seconds=20)
        must_block = L.popen("outside", sys.executable, PROBE, "hammer", L.public("spoke-a"), "22",
                             "--until-file", str(stop))
        must_pass = L.popen("spoke-a", sys.executable, PROBE, "hammer", L.ip("spoke-b"), "5432",
                            "--until-file", str(stop))
        rounds = 0
        # At least 100 rounds, and for as long as the ping runs: every probe sees applies happen.
        while rounds < 100 or ping.proc.poll() is None:
            for node in ("spoke-a", "spoke-b", "hub"):
                reply = L.request(node, "firewall-apply")
                assert reply["ok"], (rounds, node, reply)
            rounds += 1
        stop.touch()
        blocked = json.loads(must_block.communicate(timeout=60)[0])
        passed = json.loads(must_pass.communicate(timeout=60)[0])
        sent, received = ping.result()
    finally:
        stop.touch()
        lst_a.stop()
        lst_b.stop()
        stop.unlink(missing_ok=True)
    assert L.status("spoke-a")["counters"]["firewall_applies"] >= 100
    applies = rounds * 3
    PROBES.append(("outside", f"spoke-a public, {applies} applies", "tcp/22", "blocked",
                   f"{blocked['successes']}/{blocked['attempts']} open"))
    PROBES.append(("spoke-a", f"spoke-b overlay, {applies} applies", "tcp/5432", "open",
                   f"{passed['successes']}/{passed['attempts']} open"))
    PROBES.append(("spoke-a", f"spoke-b overlay, {applies} applies", "icmp 50 Hz", "pass", f"{received}/{sent}"))
    assert blocked["attempts"] > 10 and blocked["successes"] == 0
    assert passed["attempts"] > 100 and passed["successes"] == passed["attempts"]
    assert sent == received
