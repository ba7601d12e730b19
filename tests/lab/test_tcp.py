"""The TCP fallback in the lab (confidential mode): the router drops every UDP datagram of spoke-b
(a network that passes TCP only); spoke-b's tunnel to the hub goes over the hub's relay on TCP
443 and the overlay works again; kill -9 of dvpnd on either end loses nothing, since the relay is
a process of its own; UDP back, the spoke goes back to it. An Internet client meets a relay that
serves nothing but the WebSocket."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from dvpnd.lab import cluster as lab
from tests.lab.conftest import PROBE, Lab, Pinger

pytestmark = pytest.mark.root


def _restart_hard(C: Lab, name: str) -> None:
    node = C.nodes[name]
    os.kill(C.pid(name), signal.SIGKILL)
    time.sleep(0.5)
    lab.start_daemon(node)
    lab.wait_ready(node)


def transport(C: Lab, spoke: str) -> tuple[str, str, bool | None]:
    t = C.status(spoke)["transports"][0]
    return t["mode"], t["transport"], t["connected"]


def test_udp_blocked_a_spoke_on_auto_goes_over_tcp_and_back(C: Lab) -> None:
    b = C.nodes["spoke-b"]
    lab.set_transport(b, "auto")
    try:
        C.wait("spoke-b's relay probing UDP", lambda: (C.status("spoke-b")["transports"][0]["udp_ok"] is True),
               timeout=15)
        assert transport(C, "spoke-b")[:2] == ("auto", "udp")
        assert f"{lab.HUB_PUBLIC}:51820" in C.run("spoke-b", "wg", "show", "wgt0", "endpoints").stdout
        # the overlay between the two spokes first: a first handshake initiation lost is tried
        # again only after WireGuard's REKEY_TIMEOUT (5 s), as long as the stream's connect waits
        C.wait("spoke-a <-> spoke-b", lambda: C.ping("spoke-a", C.ip("spoke-b"), count=1), timeout=20, step=0.2)
        echo = C.popen("spoke-b", sys.executable, PROBE, "echo", "7781", "120")
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        stream = C.popen("spoke-a", sys.executable, PROBE, "stream", C.ip("spoke-b"), "7781", "60")
        assert stream.stdout is not None and stream.stdout.readline().strip() == "connected"

        # the network starts dropping spoke-b's UDP
        t0 = time.monotonic()
        lab.block_udp(b)
        C.wait("spoke-b over TCP", lambda: transport(C, "spoke-b")[1] == "tcp", timeout=20, step=0.2)
        C.wait("spoke-b <-> spoke-a again", lambda: C.ping("spoke-b", C.ip("spoke-a"), count=1), timeout=20,
               step=0.1)
        print(f"\nUDP blocked: spoke-b talks again over TCP {time.monotonic() - t0:.1f}s later")
        assert time.monotonic() - t0 <= 20
        assert C.ping("spoke-a", C.ip("spoke-b"), count=3) and C.ping("spoke-c", C.ip("spoke-b"), count=3)
        # what each side sees: spoke-b's hub peer at its relay on loopback, the hub's peer for
        # spoke-b at the hub relay's socket on loopback
        assert "127.0.0.1:51830" in C.run("spoke-b", "wg", "show", "wgt0", "endpoints").stdout
        assert C.wg_peers("hub")[lab.pubkey(b)]["endpoint"].startswith("127.0.0.1:")
        C.wait("the hub's relay reporting one spoke", lambda: (C.status("hub")["relay"] or {}).get("spokes") == 1,
               timeout=5)
        page = json.loads(C.run("outside", "curl", "-s", "--max-time", "5",
                                f"http://{C.public('spoke-b')}:8000/status").stdout)
        assert page["transport"] == {"hub": "tcp"}
        metrics = C.run("spoke-b", "curl", "-s", "http://127.0.0.1:9586/metrics").stdout
        assert 'dvpnd_relay_connected{hub="hub"} 1.0' in metrics
        assert 'dvpnd_hub_transport_tcp{hub="hub"} 1.0' in metrics

        # kill -9 of dvpnd on the hub, then on spoke-b, with traffic over TCP: nothing lost
        relays = {n: lab.relay_pid(C.nodes[n]) for n in ("hub", "spoke-b")}
        assert all(relays.values()), relays
        ping = Pinger(C, "spoke-a", C.ip("spoke-b"), seconds=8, hz=50)
        time.sleep(1)
        _restart_hard(C, "hub")
        _restart_hard(C, "spoke-b")
        sent, got = ping.result()
        print(f"kill -9 of dvpnd on the hub and on spoke-b, over TCP: {sent - got} of {sent} pings lost")
        assert got == sent, (sent, got)
        assert {n: lab.relay_pid(C.nodes[n]) for n in ("hub", "spoke-b")} == relays  # the same relays
        assert transport(C, "spoke-b")[1] == "tcp"

        # UDP passes again: back to it after the hold-down (lab: 5 s), losing nothing
        ping = Pinger(C, "spoke-a", C.ip("spoke-b"), seconds=14, hz=50)
        t0 = time.monotonic()
        lab.block_udp(b, on=False)
        C.wait("spoke-b back on UDP", lambda: transport(C, "spoke-b")[1] == "udp", timeout=60, step=0.2)
        print(f"UDP back: spoke-b on UDP again {time.monotonic() - t0:.1f}s later")
        sent, got = ping.result()
        print(f"  {sent - got} of {sent} pings lost while moving back")
        # (at most a datagram or two: one the hub sent through the relay in the moment before it
        # roamed to UDP is dropped, since delivering it would make spoke-b's WireGuard roam back)
        assert sent - got <= 5, (sent, got)
        assert f"{lab.HUB_PUBLIC}:51820" in C.run("spoke-b", "wg", "show", "wgt0", "endpoints").stdout
        out, err = stream.communicate(timeout=90)
        assert out.strip(), err
        r = json.loads(out)
        print(f"a TCP stream across both moves and both kills: {r}")
        assert r["error"] is None and r["echoed"] == r["sent"] > 0, r
        echo.kill()
        echo.communicate(timeout=10)
        assert C.status("spoke-b")["transports"][0]["switches"] >= 1
    finally:
        lab.block_udp(b, on=False)
        lab.set_transport(b, "udp")
    C.wait("spoke-b's relay gone (not needed)", lambda: lab.relay_pid(b) is None, timeout=10)


def test_a_spoke_on_tcp_stays_on_tcp_through_kills(C: Lab) -> None:
    """`transport: tcp`: always the relay. kill -9 of dvpnd on the spoke loses nothing; kill -9 of
    the hub's relay: it is started again, the spoke reconnects and its first datagram shows the hub's
    WireGuard the new socket, so traffic towards the spoke flows again without waiting for the
    spoke's next keepalive (25 s)."""
    b, hub = C.nodes["spoke-b"], C.nodes["hub"]
    lab.set_transport(b, "tcp")
    try:
        C.wait("spoke-b over TCP", lambda: transport(C, "spoke-b") == ("tcp", "tcp", True), timeout=20)
        C.wait("spoke-b <-> spoke-a", lambda: C.ping("spoke-b", C.ip("spoke-a"), count=1), timeout=20)
        assert "127.0.0.1:51830" in C.run("spoke-b", "wg", "show", "wgt0", "endpoints").stdout

        relay = lab.relay_pid(b)
        ping = Pinger(C, "spoke-a", C.ip("spoke-b"), seconds=5, hz=50)
        time.sleep(1)
        _restart_hard(C, "spoke-b")
        sent, got = ping.result()
        print(f"\nkill -9 of dvpnd on spoke-b (transport tcp): {sent - got} of {sent} pings lost")
        assert got == sent, (sent, got)
        assert lab.relay_pid(b) == relay

        old = lab.relay_pid(hub)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()
        C.wait("the hub's relay started again", lambda: lab.relay_pid(hub) not in (None, old), timeout=10)
        # spoke-a towards spoke-b: only the hub's WireGuard knowing spoke-b's new socket carries it
        C.wait("spoke-a -> spoke-b again", lambda: C.ping("spoke-a", C.ip("spoke-b"), count=1), timeout=8,
               step=0.1)
        print(f"kill -9 of the hub's relay: spoke-a reaches spoke-b again {time.monotonic() - t0:.1f}s later")
        C.wait("spoke-b's relay reporting its reconnect",
               lambda: C.status("spoke-b")["transports"][0]["connects"] >= 2, timeout=5)
    finally:
        lab.set_transport(b, "udp")
    C.wait("spoke-b back on UDP", lambda: C.ping("spoke-b", C.ip("spoke-a"), count=1), timeout=20)


def test_the_relay_port_faces_the_internet_with_nothing_but_the_websocket(C: Lab) -> None:
    """From outside: TCP 443 of the hub answers, but plain HTTP gets 400, any other path 404,
    a WebSocket without a proof is closed 4401; and the status page is still not on the Internet."""
    hub = C.public("hub")
    out = C.run("outside", sys.executable, PROBE, "relay", hub, "443").stdout
    r = json.loads(out)
    assert r == {"plain": 400, "other_path": 404, "no_proof_close": 4401, "bad_proof_close": 4401}, r
    assert C.tcp("outside", hub, 8000, 9586) == {8000: "timeout", 9586: "timeout"}
    assert (C.status("hub")["relay"] or {})["refused"].get("wrong proof", 0) >= 1
    # and the other spokes never noticed
    assert C.ping("spoke-a", C.ip("spoke-c"), count=2)
