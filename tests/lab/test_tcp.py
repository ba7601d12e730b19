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


def test_udp_blocked_the_spoke_goes_over_tcp_and_back(C: Lab) -> None:
    b = C.nodes["spoke-b"]
    lab.block_udp(b)
    try:
        C.wait("spoke-b cut off", lambda: not C.ping("spoke-b", C.ip("spoke-a"), count=2), timeout=10)
        t0 = time.monotonic()
        lab.set_transport(b, "tcp")
        C.wait("spoke-b <-> spoke-a over TCP", lambda: C.ping("spoke-b", C.ip("spoke-a"), count=1), timeout=20,
               step=0.1)
        print(f"\nUDP blocked: spoke-b talks again {time.monotonic() - t0:.1f}s after its switch to tcp")
        assert C.ping("spoke-a", C.ip("spoke-b"), count=3) and C.ping("spoke-c", C.ip("spoke-b"), count=3)
        # what each side sees: spoke-b's hub peer at its relay on loopback; the hub's peer for
        # spoke-b at its relay's socket on loopback
        hub_peer = C.run("spoke-b", "wg", "show", "wgt0", "endpoints").stdout
        assert "127.0.0.1:51830" in hub_peer
        tkey = lab.pubkey(b)
        assert C.wg_peers("hub")[tkey]["endpoint"].startswith("127.0.0.1:")
        st = C.status("spoke-b")
        assert [(t["hub"], t["transport"], t["connected"]) for t in st["transports"]] == [("hub", "tcp", True)]
        C.wait("the hub's relay reporting one spoke", lambda: (C.status("hub")["relay"] or {}).get("spokes") == 1,
               timeout=5)
        page = json.loads(C.run("outside", "curl", "-s", "--max-time", "5",
                                f"http://{C.public('spoke-b')}:8000/status").stdout)
        assert page["transport"] == {"hub": "tcp"}
        metrics = C.run("spoke-b", "curl", "-s", "http://127.0.0.1:9586/metrics").stdout
        assert 'dvpnd_relay_connected{hub="hub"} 1.0' in metrics

        # kill -9 of dvpnd on the hub, then on spoke-b, with traffic over TCP: nothing lost
        relays = {n: lab.relay_pid(C.nodes[n]) for n in ("hub", "spoke-b")}
        assert all(relays.values()), relays
        ping = Pinger(C, "spoke-a", C.ip("spoke-b"), seconds=8, hz=50)
        time.sleep(1)
        _restart_hard(C, "hub")
        _restart_hard(C, "spoke-b")
        sent, got = ping.result()
        print(f"kill -9 of dvpnd on the hub and on spoke-b over TCP: {sent - got} of {sent} pings lost")
        assert got == sent, (sent, got)
        assert {n: lab.relay_pid(C.nodes[n]) for n in ("hub", "spoke-b")} == relays  # the same relays
    finally:
        lab.block_udp(b, on=False)
    # UDP works again: the operator (or `auto`, later) puts spoke-b back on it
    t0 = time.monotonic()
    ping = Pinger(C, "spoke-a", C.ip("spoke-b"), seconds=6, hz=50)
    lab.set_transport(b, "udp")
    sent, got = ping.result()
    print(f"back to UDP: {sent - got} of {sent} pings lost while moving")
    C.wait("spoke-b back on UDP", lambda: C.ping("spoke-b", C.ip("spoke-a"), count=1), timeout=20)
    assert f"{lab.HUB_PUBLIC}:51820" in C.run("spoke-b", "wg", "show", "wgt0", "endpoints").stdout
    assert time.monotonic() - t0 < 30
    C.wait("spoke-b's relay gone (not needed)", lambda: lab.relay_pid(b) is None, timeout=10)


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
