"""The foundation, end to end in the lab: interface, handshakes, forwarding through the hub,
peers.d reloads without loss, daemons killed without loss, drift repaired, bad reloads refused."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from dvpnd.lab import cluster as lab
from tests.lab.conftest import Lab, Pinger

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_hub_interface_is_up_and_forwards(L: Lab) -> None:
    addr = json.loads(L.run("hub", "ip", "-j", "addr", "show", "wg0").stdout)[0]
    assert "UP" in addr["flags"]
    assert [(a["local"], a["prefixlen"]) for a in addr["addr_info"] if a["family"] == "inet"] == [("10.88.0.1", 24)]
    assert L.run("hub", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert L.run("hub", "wg", "show", "wg0", "listen-port").stdout.strip() == "51820"


def test_every_spoke_handshook_with_the_hub(L: Lab) -> None:
    peers = L.wg_peers("hub")
    assert len(peers) == 3
    now = time.time()
    for key, p in peers.items():
        assert 0 < now - int(p["latest_handshake"]) < 180, (key, p)
    for s in ("spoke-a", "spoke-b", "spoke-c"):
        (hub,) = L.wg_peers(s).values()
        assert hub["endpoint"] == "192.0.2.10:51820" and hub["allowed_ips"] == "10.88.0.0/24"
        assert int(hub["latest_handshake"]) > 0


def test_each_node_made_its_own_key_and_only_public_keys_travel(L: Lab) -> None:
    pubs = {n: L.dvpnctl(n, "pubkey").stdout.strip() for n in ("hub", "spoke-a", "spoke-b", "spoke-c")}
    assert len(set(pubs.values())) == 4
    assert set(L.wg_peers("hub")) == {pubs["spoke-a"], pubs["spoke-b"], pubs["spoke-c"]}
    for n in pubs:
        key_file = Path(L.nodes[n].state_dir or "") / "private.key"
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        secret = key_file.read_text().strip()
        # The secret appears in no other file of the lab: configs, peers.d, logs.
        for f in Path(lab.LAB_DIR).rglob("*"):
            if f.is_file() and f != key_file and not f.is_socket():
                assert secret not in f.read_text(errors="replace"), f


def _received_by_hub(L: Lab) -> dict[str, int]:
    """Bytes the hub received from each spoke (`wg show wg0 transfer`: key, rx, tx)."""
    rows = (ln.split("\t") for ln in L.run("hub", "wg", "show", "wg0", "transfer").stdout.splitlines())
    return {r[0]: int(r[1]) for r in rows}


def test_spokes_reach_each_other_through_the_hub(L: Lab) -> None:
    before = _received_by_hub(L)
    assert L.ping("spoke-a", L.ip("spoke-b"), count=5)
    assert L.ping("spoke-b", L.ip("spoke-a"), count=5)
    assert L.ping("spoke-c", L.ip("spoke-a"), count=2)
    after = _received_by_hub(L)
    # The packets really crossed the hub: it received from every spoke.
    assert all(after[k] > before[k] for k in after)


def test_lab_status_json_has_the_documented_fields(L: Lab) -> None:
    r = L.run("hub", sys.executable, "-m", "dvpnd.cli", "lab", "status", "--json")
    nodes = json.loads(r.stdout)["nodes"]
    names = {n["name"] for n in nodes}
    assert {"hub", "spoke-a", "spoke-b", "spoke-c", "outside"} <= names
    for n in nodes:
        assert {"name", "role", "netns", "public_ip", "overlay_ip", "status_url", "state_dir", "config",
                "pid"} <= set(n)
    spoke = next(n for n in nodes if n["name"] == "spoke-a")
    assert spoke["overlay_ip"] == "10.88.0.11" and spoke["pid"] == L.pid("spoke-a")
    # each page seen from inside its node: the hub's on 127.0.0.1, as in production
    hub = next(n for n in nodes if n["name"] == "hub")
    assert hub["page"] == "http://127.0.0.1:8000/status: ok", hub
    assert spoke["page"] == f"http://{L.public('spoke-a')}:8000/status: ok", spoke


def test_dvpnctl_inside_a_node_talks_to_that_nodes_daemon(L: Lab) -> None:
    st = json.loads(L.dvpnctl("spoke-b", "status", "--json").stdout)
    assert st["node"] == "spoke-b" and st["overlay_ip"] == "10.88.0.12"
    assert [p["name"] for p in st["peers"]] == ["hub"] and st["peers"][0]["state"] == "up"


def _peer_file(L: Lab, name: str) -> Path:
    return Path(L.nodes["hub"].dir) / "peers.d" / f"{name}.yaml"


def test_spoke_removed_and_added_via_peers_d_while_another_pair_pings_without_loss(L: Lab) -> None:
    c_file = _peer_file(L, "spoke-c")
    c_entry = c_file.read_text()
    c_key = yaml.safe_load(c_entry)["public_key"]
    ping = Pinger(L, "spoke-a", L.ip("spoke-b"), seconds=12)
    try:
        time.sleep(1)
        c_file.unlink()
        os.kill(L.pid("hub"), signal.SIGHUP)
        L.wait("spoke-c removed from the hub", lambda: c_key not in L.wg_peers("hub"), timeout=10)
        assert not L.ping("spoke-c", L.ip("spoke-a"), count=2)
        c_file.write_text(c_entry)
        assert L.dvpnctl("hub", "reload").returncode == 0
        assert c_key in L.wg_peers("hub")
        L.wait("spoke-c back", lambda: L.ping("spoke-c", L.ip("spoke-a"), count=1), timeout=20)
    finally:
        if not c_file.exists():
            c_file.write_text(c_entry)
            L.dvpnctl("hub", "reload", check=False)
        sent, received = ping.result()
    assert sent == received == 600, f"{sent - received} of {sent} pings lost"


@pytest.mark.parametrize("node", ["hub", "spoke-a"])
def test_kill_9_of_dvpnd_loses_no_packet_and_a_restart_converges(L: Lab, node: str) -> None:
    wg_go = L.wg_go_pid(node)
    ping = Pinger(L, "spoke-a", L.ip("spoke-b"), seconds=8)
    time.sleep(1)
    os.kill(L.pid(node), signal.SIGKILL)
    time.sleep(3)  # the data plane runs on without its daemon
    assert L.wg_go_pid(node) == wg_go, "wireguard-go must outlive dvpnd"
    lab.up(spokes=3, backend="auto")  # restarts the dead daemon
    sent, received = ping.result()
    assert sent == received, f"{sent - received} of {sent} pings lost"
    st = L.status(node)
    assert st["ready"] and all(p["state"] == "up" for p in st["peers"])
    assert L.wg_go_pid(node) == wg_go
    # The restarted daemon found the device as it should be: nothing to write.
    assert st["counters"]["device_writes"] == 0


def test_peer_removed_by_hand_is_restored(L: Lab) -> None:
    key = yaml.safe_load(_peer_file(L, "spoke-c").read_text())["public_key"]
    L.run("hub", "wg", "set", "wg0", "peer", key, "remove")
    assert key not in L.wg_peers("hub")
    # reconcile_interval is 10 s in the lab
    L.wait("the peer restored", lambda: key in L.wg_peers("hub"), timeout=20)
    assert L.wg_peers("hub")[key]["allowed_ips"] == "10.88.0.13/32"
    L.wait("spoke-c reachable again", lambda: L.ping("spoke-c", L.ip("spoke-a"), count=1), timeout=20)


def test_reload_with_a_bad_config_is_refused_and_changes_nothing(L: Lab) -> None:
    bad = _peer_file(L, "zz-bad")
    before = L.wg_peers("hub")
    bad.write_text("public_key: nope\naddress: 10.88.0.12\n")
    try:
        r = L.dvpnctl("hub", "reload", check=False)
        assert r.returncode == 2
        assert f"{bad}:1: public_key: public key is not a WireGuard key" in r.stderr
        assert f"{bad}:2: address: duplicate address 10.88.0.12" in r.stderr
        os.kill(L.pid("hub"), signal.SIGHUP)  # the same through the signal
        time.sleep(1)
        assert set(L.wg_peers("hub")) == set(before)
        assert lab.read_pid(L.nodes["hub"]) and L.status("hub")["ready"]
        log = (Path(L.nodes["hub"].dir) / "dvpnd.log").read_text()
        assert "reload rejected" in log
    finally:
        bad.unlink()
    assert L.ping("spoke-a", L.ip("spoke-b"), count=2)


def test_a_reconcile_with_nothing_to_do_writes_nothing(L: Lab) -> None:
    before = L.status("hub")["counters"]
    for _ in range(3):
        assert L.dvpnctl("hub", "reload").returncode == 0
    after = L.status("hub")["counters"]
    assert after["reconcile_count"] >= before["reconcile_count"] + 3
    assert after["device_writes"] == before["device_writes"]
    assert after["firewall_applies"] == before["firewall_applies"]


def test_hub_back_from_a_reboot_reaches_idle_spokes_by_itself(L: Lab) -> None:
    """Daemon and interface gone, then started: the hub re-initiates with its remembered endpoints."""
    hub = L.nodes["hub"]
    remembered = json.loads((Path(hub.state_dir or "") / "endpoints.json").read_text())
    assert set(remembered) == set(L.wg_peers("hub"))
    os.kill(L.pid("hub"), signal.SIGKILL)
    L.run("hub", "ip", "link", "del", "wg0")  # wireguard-go exits with its interface
    time.sleep(2)
    t0 = time.monotonic()
    lab.start_daemon(hub)
    lab.wait_ready(hub)
    peers = L.wg_peers("hub")
    assert {k: p["endpoint"] for k, p in peers.items()} == remembered
    pairs = [("spoke-a", "spoke-b"), ("spoke-b", "spoke-c"), ("spoke-c", "spoke-a")]
    L.wait("every spoke passing traffic again",
           lambda: all(L.ping(a, L.ip(b), count=1) for a, b in pairs), timeout=60, step=0.2)
    print(f"\nhub reboot: every spoke passes traffic {time.monotonic() - t0:.1f}s after dvpnd started")


def test_dvpnctl_down_removes_interface_and_table_and_up_brings_them_back(L: Lab) -> None:
    pid = L.pid("spoke-c")
    wg_go = L.wg_go_pid("spoke-c")
    r = L.dvpnctl("spoke-c", "down")
    assert "removed" in r.stdout
    L.wait("dvpnd to exit", lambda: not lab.pid_alive(pid), timeout=10)
    assert "wg0" not in L.run("spoke-c", "ip", "-br", "link").stdout
    assert L.run("spoke-c", "nft", "list", "table", "inet", "dvpn", check=False).returncode != 0
    assert wg_go and not Path(f"/proc/{wg_go}").exists()
    lab.up(spokes=3, backend="auto")
    assert L.wg_go_pid("spoke-c") and L.ping("spoke-c", L.ip("spoke-a"), count=2)
