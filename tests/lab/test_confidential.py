"""The confidential overlay in the lab: spoke-to-spoke traffic the hub cannot read, members the
hub cannot choose, and what a compromised hub, a replayed roster and a dead wireguard-go can do.

The hub is made "compromised" the way an attacker who owns it would: dvpnd on it stopped (its
data plane keeps running), its firewall table deleted, a roster service of the attacker's own on
its transit address, and WireGuard peers added by hand."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from dvpnd.lab import cluster as lab
from dvpnd.roster.authority import Authority
from dvpnd.roster.model import Member, Roster
from dvpnd.wireguard.keys import encode_key, generate_private_key, public_key
from tests.lab.conftest import PROBE, Lab

pytestmark = pytest.mark.root
PORT = 7777
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _key() -> tuple[str, str]:
    k = generate_private_key()
    return encode_key(k), encode_key(public_key(k))


class Capture:
    """tcpdump on every interface of a node, written to a file the test reads afterwards."""

    def __init__(self, L: Lab, node: str, name: str):
        self.path = Path(L.nodes[node].dir) / f"{name}.pcap"
        self.proc = L.popen(node, "tcpdump", "-i", "any", "-n", "--immediate-mode", "-U", "-s", "0", "-w", str(self.path))
        assert self.proc.stderr is not None
        seen = ""
        while "listening" not in seen:  # "data link type ..." first, then "listening on any ..."
            line = self.proc.stderr.readline()
            assert line, seen
            seen += line
        # "listening" comes a moment before packets do (seen: an empty capture): wait for one
        deadline = time.monotonic() + 10
        while self.path.stat().st_size <= 24:
            assert time.monotonic() < deadline, "tcpdump captures nothing"
            L.run(node, "ping", "-c", "1", "-W", "1", "127.0.0.1", check=False)

    def stop(self) -> bytes:
        if self.proc.poll() is None:
            time.sleep(0.5)
            self.proc.send_signal(signal.SIGTERM)
            self.proc.communicate(timeout=10)
        data = self.path.read_bytes() if self.path.exists() else b""
        self.path.unlink(missing_ok=True)
        return data


@pytest.fixture
def captures() -> Iterator[list[Capture]]:
    """Every capture a test starts is stopped, whatever the test's outcome."""
    started: list[Capture] = []
    yield started
    for c in started:
        c.stop()


def send_marker(L: Lab, src: str, dst: str, dst_ip: str, marker: str) -> dict[str, str]:
    rx = L.popen(dst, sys.executable, PROBE, "catch", str(PORT), "8")
    assert rx.stdout is not None
    assert rx.stdout.readline().strip() == "ready"
    L.run(src, sys.executable, PROBE, "send", dst_ip, str(PORT), marker)
    out, _ = rx.communicate(timeout=20)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


@contextmanager
def throwaway_postgres(L: Lab, node: str) -> Iterator[None]:
    """A PostgreSQL 15 server of its own in `node`'s namespace, on its overlay address, without
    TLS (as replication inside the overlay runs): a real server speaking the real protocol. It is
    ready when `node` itself reaches it there (over lo: the fail-closed rule lets that pass)."""
    d = Path(tempfile.mkdtemp(prefix="dvpn-marker-pg.", dir="/var/tmp"))
    shutil.chown(d, "postgres", "postgres")
    proc = None
    try:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(d / "data"),
                        "-A", "trust", "-U", "postgres", "--no-sync"], check=True, capture_output=True, timeout=120)
        with open(d / "data" / "pg_hba.conf", "a") as f:
            f.write("host all all 10.88.0.0/24 trust\n")
        # setpriv execs: the PID is the server's own, which a SIGINT stops (runuser would stay
        # between, and leave the server running with the test's pipes)
        proc = L.popen(node, "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
                       str(PG_BIN / "postgres"), "-D", str(d / "data"),
                       "-c", f"listen_addresses={L.ip(node)}", "-c", f"unix_socket_directories={d}",
                       "-c", "fsync=off", "-c", "ssl=off", "-c", "log_min_messages=fatal")
        L.wait(f"PostgreSQL on {node}", lambda: L.run(node, str(PG_BIN / "pg_isready"), "-q", "-h", L.ip(node),
                                                       check=False).returncode == 0, timeout=30)
        yield
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # a fast shutdown
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        shutil.rmtree(d, ignore_errors=True)


def marker_through_hub(L: Lab, captures: list[Capture]) -> tuple[dict[str, str], bytes, str]:
    """spoke-a sends a marker to spoke-b over a plain TCP and UDP socket, and as a query and its
    answer over the PostgreSQL protocol, while the hub captures every packet on every interface."""
    marker = "dvpn-marker-" + secrets.token_hex(8)
    with throwaway_postgres(L, "spoke-b"):
        cap = Capture(L, "hub", "marker")
        captures.append(cap)
        got = send_marker(L, "spoke-a", "spoke-b", L.ip("spoke-b"), marker)
        dsn = f"host={L.ip('spoke-b')} user=postgres dbname=postgres sslmode=disable application_name={marker}"
        r = L.run("spoke-a", "psql", "-XAt", dsn, "-c", f"SELECT 'pg:' || '{marker}', current_setting('application_name')")
        got["postgres"] = r.stdout.strip()
        return got, cap.stop(), marker


def test_every_pair_talks_and_the_hub_holds_no_overlay_key(C: Lab) -> None:
    for a in ("spoke-a", "spoke-b", "spoke-c"):
        for b in ("spoke-a", "spoke-b", "spoke-c"):
            if a != b:
                assert C.ping(a, C.ip(b)), f"{a} -> {b}"
    roster = lab.authority().current()
    assert roster is not None and len(roster.members) == 3
    hub_dump = C.run("hub", "wg", "show", "all", "dump").stdout
    assert set(C.wg_peers("hub")) == {m.transit_key for m in roster.members}
    assert not any(m.overlay_key in hub_dump for m in roster.members)
    assert "10.88.0." not in C.run("hub", "ip", "-4", "-br", "addr").stdout  # no overlay address at all
    # the overlay's peers on a spoke: the other members, by overlay key, no keepalive, MTU 1340
    a = C.wg_peers("spoke-a")
    assert set(a) == {m.overlay_key for m in roster.members if m.name != "spoke-a"}
    assert "mtu 1340" in C.run("spoke-a", "ip", "link", "show", "wg0").stdout
    dump = C.run("spoke-a", "wg", "show", "wg0", "dump").stdout.strip().splitlines()[1:]
    assert [line.split("\t")[-1] for line in dump] == ["off", "off"]  # no overlay keepalives
    page = json.loads(C.run("spoke-a", "curl", "-s", f"http://{C.public('spoke-a')}:8000/status").stdout)
    assert page["mode"] == "confidential" and page["roster_serial"] == roster.serial
    assert page["wg"]["interface"] == "wg0" and page["wg"]["peer_count"] == 2 and page["state"] == "ok"


def test_the_largest_unfragmented_ping_passes_with_df_set(C: Lab) -> None:
    # overlay MTU 1340: 1312 bytes of ICMP payload + 28 of headers; one more does not fit
    assert C.run("spoke-a", "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1312", C.ip("spoke-b"),
                 check=False).returncode == 0
    r = C.run("spoke-a", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1313", C.ip("spoke-b"), check=False)
    assert r.returncode != 0 and "message too long" in (r.stdout + r.stderr).lower()


def test_the_hub_captures_only_ciphertext(C: Lab, captures: list[Capture]) -> None:
    got, pcap, marker = marker_through_hub(C, captures)
    assert got == {"tcp": marker, "udp": marker, "postgres": f"pg:{marker}|{marker}"}, got  # it did cross the hub
    # the capture holds the overlay's packets between the transit addresses 10.89.0.11 and .12
    assert bytes([10, 89, 0, 11]) in pcap and bytes([10, 89, 0, 12]) in pcap
    assert marker.encode() not in pcap


def _counts(L: Lab, node: str) -> dict[str, int]:
    return dict(L.status(node)["roster"]["refused"])


def _serve(L: Lab, d: Path) -> Any:
    """The attacker's roster service on the hub's transit address."""
    return L.popen("hub", sys.executable, "-m", "http.server", "--bind", "10.89.0.1", "51821",
                   "--directory", str(d))


def _signed(auth: Authority, roster: Roster) -> bytes:
    return auth.sign(roster)


def test_a_compromised_hub_cannot_admit_anyone(C: Lab, tmp_path: Path) -> None:
    hub = C.nodes["hub"]
    auth = lab.authority()
    real = auth.current()
    assert real is not None
    doc = auth.roster_file.read_bytes()
    now = int(time.time())
    rogue_t, rogue_t_pub = _key()
    rogue_o, rogue_o_pub = _key()
    rogue = Member("rogue", IPv4Address("10.88.0.99"), rogue_t_pub, rogue_o_pub)
    other = Authority(tmp_path / "other")
    other.init()
    payload = json.loads(json.loads(doc)["payload"])
    payload["members"][0]["overlay_key"] = rogue_o_pub
    tampered = json.loads(doc)
    tampered["payload"] = json.dumps(payload, separators=(",", ":"))
    cases: list[tuple[str, bytes]] = [
        ("signature", _signed(other, replace(real, serial=real.serial + 1, members=real.members + (rogue,)))),
        ("signature", json.dumps(tampered).encode()),
        ("signature", json.dumps(dict(json.loads(doc), proof={"type": "none"})).encode()),
        ("malformed", b"[" * 200_000),
        ("malformed", b'{"format": "dvpn-roster/1", "payload": "' + b"x" * (3 << 20) + b'", "proof": {}}'),
        ("malformed", _signed(auth, replace(real, serial=real.serial + 1, members=real.members + (
            replace(rogue, address=real.members[0].address),)))),
        ("malformed", _signed(auth, replace(real, serial=real.serial + 1, members=real.members + (
            replace(rogue, name="Not_A_Label"),)))),
        ("expired", _signed(auth, replace(real, serial=real.serial + 1, issued=now - 100, expires=now - 10))),
    ]
    d = tmp_path / "www"
    d.mkdir()
    lab.stop_daemon(hub)
    C.run("hub", "nft", "delete", "table", "inet", "dvpn")
    server = _serve(C, d)
    try:
        for reason, bad in cases:
            before = {s: _counts(C, s).get(reason, 0) for s in ("spoke-a", "spoke-b", "spoke-c")}
            (d / "roster.tmp").write_bytes(bad)
            (d / "roster.tmp").rename(d / "roster")
            C.wait(f"every spoke to refuse a roster ({reason})",
                   lambda: all(_counts(C, s).get(reason, 0) > before[s] for s in before), timeout=15)
            for s in before:
                st = C.status(s)
                assert st["roster"]["serial"] == real.serial, (reason, st["roster"])
                assert rogue_o_pub not in C.wg_peers(s)
        log = (Path(C.nodes["spoke-a"].dir) / "dvpnd.log").read_text()
        assert "roster refused (signature)" in log and "does not verify against the authority key" in log

        # A transit peer of the hub operator's own: it reaches the hub, and no spoke's overlay.
        hub_key = C.run("hub", "wg", "show", "wg0", "public-key").stdout.strip()
        C.run("hub", "wg", "set", "wg0", "peer", rogue_t_pub, "allowed-ips", "10.89.0.99/32")
        keyf = Path(C.nodes["outside"].dir) / "rogue.key"
        keyf.write_text(rogue_t + "\n")
        okeyf = Path(C.nodes["outside"].dir) / "rogue-overlay.key"
        okeyf.write_text(rogue_o + "\n")
        b_overlay = next(m.overlay_key for m in real.members if m.name == "spoke-b")
        for cmd in (["wireguard-go", "wgr"], ["ip", "addr", "add", "10.89.0.99/24", "dev", "wgr"],
                    ["wg", "set", "wgr", "private-key", str(keyf), "peer", hub_key, "endpoint", "192.0.2.10:51820",
                     "allowed-ips", "10.89.0.0/24", "persistent-keepalive", "1"],
                    ["ip", "link", "set", "wgr", "up"],
                    ["wireguard-go", "wgo"], ["ip", "addr", "add", "10.88.0.99/24", "dev", "wgo"],
                    ["wg", "set", "wgo", "private-key", str(okeyf), "listen-port", "51821", "peer", b_overlay,
                     "endpoint", "10.89.0.12:51821", "allowed-ips", "10.88.0.0/24"],
                    ["ip", "link", "set", "wgo", "mtu", "1340", "up"]):
            C.run("outside", *cmd)
        C.wait("the rogue on the hub's transit", lambda: C.ping("outside", "10.89.0.1", count=1), timeout=15)
        assert not C.ping("outside", C.ip("spoke-b"), count=3)  # and in no spoke's overlay
        assert C.tcp("outside", "10.89.0.12", 8000, 22, 5432, timeout=1.5) == {
            8000: "timeout", 22: "timeout", 5432: "timeout"}
        assert rogue_o_pub not in C.wg_peers("spoke-b")
        # The hub's own view of a spoke's transit address: the overlay's UDP port, nothing else.
        scan = C.run("hub", "nmap", "-Pn", "-n", "-sT", "-p", "1-1024,5432,8000,9586", "-T5", "--max-retries", "0",
                     "--host-timeout", "60s", "10.89.0.12", timeout=90).stdout
        assert "/tcp open" not in scan, scan
        assert "filtered" in scan or "ignored states" in scan, scan
        udp = C.run("hub", "nmap", "-Pn", "-n", "-sU", "-p", "51821,53,5432,8000", "--max-retries", "1",
                    "10.89.0.12", timeout=90).stdout
        assert "/udp open " not in udp.replace("open|filtered", ""), udp
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=10)
        for link in ("wgr", "wgo"):
            C.run("outside", "ip", "link", "del", link, check=False)
        C.run("hub", "wg", "set", "wg0", "peer", rogue_t_pub, "remove", check=False)
        lab.start_daemon(hub)
        lab.wait_ready(hub)
    assert rogue_t_pub not in C.wg_peers("hub")  # the real daemon puts the hub back in line


def test_a_removed_spoke_reaches_no_one_and_a_replay_does_not_bring_it_back(C: Lab, tmp_path: Path) -> None:
    auth = lab.authority()
    old_doc = auth.roster_file.read_bytes()
    real = auth.current()
    assert real is not None
    c_key = next(m.overlay_key for m in real.members if m.name == "spoke-c")
    assert C.ping("spoke-c", C.ip("spoke-a"))
    # removal, as the operator does it: on the authority's machine, then published on the hub
    t0 = time.monotonic()
    r = C.dvpnctl("outside", "roster", "remove", "spoke-c", "--dir", str(auth.dir))  # the operator's machine
    assert "removed spoke-c" in r.stdout
    C.dvpnctl("hub", "roster", "publish", str(auth.roster_file))
    C.wait("spoke-a and spoke-b to drop spoke-c",
           lambda: all(c_key not in C.wg_peers(s) for s in ("spoke-a", "spoke-b")), timeout=5, step=0.05)
    took = time.monotonic() - t0
    assert took < 5, took
    assert not C.ping("spoke-c", C.ip("spoke-a"), count=3)
    assert C.ping("spoke-a", C.ip("spoke-b"))
    # the hub dropped spoke-c's transit peer too: it is cut off from the hub as well
    C.wait("the hub to drop spoke-c", lambda: real.members[2].transit_key not in C.wg_peers("hub"), timeout=5)

    # the hub, compromised, replays the roster from before the removal
    d = tmp_path / "www"
    d.mkdir()
    (d / "roster").write_bytes(old_doc)
    before = _counts(C, "spoke-a").get("older", 0)
    hub = C.nodes["hub"]
    lab.stop_daemon(hub)
    server = _serve(C, d)
    try:
        C.wait("spoke-a to refuse the replay", lambda: _counts(C, "spoke-a").get("older", 0) > before, timeout=15)
        assert c_key not in C.wg_peers("spoke-a")
        assert not C.ping("spoke-c", C.ip("spoke-a"), count=2)
        # nor after a restart of spoke-a: the highest serial is on its disk
        lab.stop_daemon(C.nodes["spoke-a"])
        lab.start_daemon(C.nodes["spoke-a"])
        lab.wait_ready(C.nodes["spoke-a"])
        time.sleep(2)
        assert c_key not in C.wg_peers("spoke-a")
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=10)
        lab.start_daemon(hub)
        lab.wait_ready(hub)
    # and back in: a new serial with spoke-c's keys
    c = C.nodes["spoke-c"]
    C.dvpnctl("outside", "roster", "add", "spoke-c", "--dir", str(auth.dir), "--address", C.ip("spoke-c"),
              "--transit-key", lab.pubkey(c), "--overlay-key", lab.pubkey(c, "--overlay"))
    C.dvpnctl("hub", "roster", "publish", str(auth.roster_file))
    # spoke-c asks every roster_poll while it is out (no held request on its dead transit), so it
    # is back within one poll, WireGuard's handshake retry (5 s) and a connect timeout (5 s)
    C.wait("spoke-c back", lambda: C.ping("spoke-c", C.ip("spoke-a"), count=1), timeout=20)


def test_a_dead_overlay_leaks_nothing_in_clear(C: Lab, captures: list[Capture]) -> None:
    """wireguard-go of spoke-a's wg0 killed while it sends: nothing leaves, in clear or at all,
    towards the overlay's addresses (the fail-closed rule), until dvpnd brings wg0 back."""
    pid = C.wg_go_pid("spoke-a")
    assert pid
    marker = "dvpn-marker-" + secrets.token_hex(8)
    cap_a = Capture(C, "spoke-a", "dead-a")
    captures.append(cap_a)
    cap_h = Capture(C, "hub", "dead-h")
    captures.append(cap_h)
    # dvpnd stopped first (it leaves the data plane as it is), so that it does not bring wg0 back
    # in the middle of the test: the window in which it has not noticed yet, made long
    lab.stop_daemon(C.nodes["spoke-a"])
    os.kill(pid, signal.SIGKILL)
    C.wait("wg0 gone with its wireguard-go", lambda: "wg0" not in C.run("spoke-a", "ip", "-br", "link").stdout,
           timeout=5, step=0.05)
    C.run("spoke-a", sys.executable, PROBE, "send", C.ip("spoke-b"), str(PORT), marker)
    C.run("spoke-a", "ping", "-c", "3", "-i", "0.2", "-W", "1", C.ip("spoke-b"), check=False)
    a, h = cap_a.stop(), cap_h.stop()
    assert marker.encode() not in a and marker.encode() not in h
    chain = C.run("spoke-a", "nft", "list", "chain", "inet", "dvpn", "output").stdout
    m = re.search(r"ip daddr 10\.88\.0\.0/24 oifname != \{ \"lo\", \"wg0\" \} counter packets (\d+)", chain)
    assert m and int(m.group(1)) > 0, chain  # the default route was there; the rule stopped them
    # dvpnd brings the overlay back
    lab.start_daemon(C.nodes["spoke-a"])
    lab.wait_ready(C.nodes["spoke-a"])
    C.wait("wg0 back on spoke-a", lambda: C.ping("spoke-a", C.ip("spoke-b"), count=1), timeout=30)


def test_the_same_marker_test_finds_plaintext_in_routed_mode(L: Lab, captures: list[Capture]) -> None:
    """The marker test can fail: through a routed hub the marker is in the hub's capture."""
    got, pcap, marker = marker_through_hub(L, captures)
    assert got == {"tcp": marker, "udp": marker, "postgres": f"pg:{marker}|{marker}"}, got
    assert marker.encode() in pcap
    assert f"pg:' || '{marker}".encode() in pcap  # the PostgreSQL query, as the client sent it
