"""Two hubs in the lab (confidential mode): a hub killed hard, brought back, behind on the roster,
and both down at once, each with traffic running, as a user sees it.

"Killed hard" is what a dead droplet looks like from the spokes: its namespace's link down, its
dvpnd and wireguard-go killed with SIGKILL; it comes back from its state directory, as after a
reboot. The packet loss of each failover is printed (pytest -s shows it)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvpnd.lab import cluster as lab
from tests.lab.conftest import PROBE, Lab, Pinger

pytestmark = pytest.mark.root
ECHO_PORT = 7778


def kill_hub(H: Lab, name: str) -> None:
    lab.kill_hard(H.nodes[name])


def revive_hub(H: Lab, name: str) -> None:
    lab.revive(H.nodes[name])


def hub_in_use(H: Lab, spoke: str) -> str | None:
    return next((h["name"] for h in H.status(spoke).get("hubs", []) if h["in_use"]), None)


@pytest.fixture
def both_hubs_back(H: Lab) -> Iterator[Lab]:
    """Whatever a test does to the hubs, the next test starts with both up and in use as preferred."""
    try:
        yield H
    finally:
        for name in ("hub", "hub-b"):
            revive_hub(H, name)
        H.wait("every spoke back on hub", lambda: all(hub_in_use(H, s) == "hub"
                                                      for s in ("spoke-a", "spoke-b", "spoke-c")), timeout=30)
        # and every overlay endpoint with it (a pair left on hub-b is put back within STRAY)
        H.wait("every overlay endpoint through hub", lambda: all(
            not p["endpoint"].startswith("10.90.") for s in ("spoke-a", "spoke-b", "spoke-c")
            for p in H.wg_peers(s).values()), timeout=20)


def test_two_hubs_every_spoke_probes_both_and_uses_the_first(H: Lab) -> None:
    for s in ("spoke-a", "spoke-b", "spoke-c"):
        st = H.status(s)
        assert [(h["name"], h["up"], h["in_use"]) for h in st["hubs"]] == [("hub", True, True), ("hub-b", True, False)]
        # and never left it: the fellow spokes' tunnels coming up one by one at the start is no
        # reason to move (seen in CI: hub-b, answering first, took the overlay for a while)
        assert st["failovers"] == 0, (s, st["failovers"])
        assert {p["name"] for p in st["peers"]} >= {"hub", "hub-b"}
    # both hubs hold the roster; the overlay goes through the first one
    assert H.status("hub")["roster"]["serial"] == H.status("hub-b")["roster"]["serial"]
    peers = H.wg_peers("spoke-a")
    assert any(p.get("endpoint", "").startswith("10.89.0.") for p in peers.values())
    metrics = H.run("spoke-a", "curl", "-s", "http://127.0.0.1:9586/metrics").stdout
    assert 'dvpnd_hub_up{hub="hub-b"} 1.0' in metrics and 'dvpnd_hub_in_use{hub="hub"} 1.0' in metrics


def test_a_hub_killed_hard_moves_traffic_to_the_other_and_back_without_loss(both_hubs_back: Lab) -> None:
    H = both_hubs_back
    echo = H.popen("spoke-b", sys.executable, PROBE, "echo", str(ECHO_PORT), "60")
    assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
    stream = H.popen("spoke-a", sys.executable, PROBE, "stream", H.ip("spoke-b"), str(ECHO_PORT), "22")
    assert stream.stdout is not None and stream.stdout.readline().strip() == "connected"
    ping = Pinger(H, "spoke-a", H.ip("spoke-b"), seconds=8, hz=100)
    time.sleep(2)
    kill_hub(H, "hub")
    sent, got = ping.result()
    lost = sent - got
    print(f"\nhub killed: {lost} of {sent} pings lost at 100 Hz ({lost / 100:.2f} s)")
    assert lost <= 300, (sent, got)  # the bound: 3 s; the goal 1 s
    for s in ("spoke-a", "spoke-b", "spoke-c"):
        assert hub_in_use(H, s) == "hub-b"
        assert H.status(s)["failovers"] >= 1
    assert "hub hub: no answer" in " ".join(H.status("spoke-a")["problems"])

    # back from its state directory: the spokes return to it after the hold-down, losing nothing
    ping = Pinger(H, "spoke-a", H.ip("spoke-b"), seconds=8, hz=100)
    revive_hub(H, "hub")
    H.wait("spoke-a back on hub", lambda: hub_in_use(H, "spoke-a") == "hub", timeout=20)
    sent, got = ping.result()
    print(f"hub back: {sent - got} of {sent} pings lost")
    assert got == sent, (sent, got)
    out, err = stream.communicate(timeout=60)
    r = json.loads(out)
    print(f"TCP stream across both moves: {r}")
    assert r["error"] is None and r["echoed"] == r["sent"] > 0, (r, err)
    echo.kill()
    echo.communicate(timeout=10)


def test_a_hub_cut_off_from_one_spoke_moves_that_spoke_only(both_hubs_back: Lab) -> None:
    """The router drops everything between hub and spoke-c: spoke-c moves to hub-b, spoke-a and
    spoke-b stay on hub, and spoke-a <-> spoke-c still flows, through hub-b (spoke-a's endpoint
    for spoke-c roams there and stays, since hub-b works for spoke-a too); healed, both ends go
    back to hub by themselves."""
    H = both_hubs_back
    hub, c = H.public("hub"), H.public("spoke-c")
    H.nft_file("router", f"""table inet labcut {{
  chain cut {{ type filter hook forward priority -10; policy accept;
    ip saddr {c} ip daddr {hub} drop
    ip saddr {hub} ip daddr {c} drop
  }}
}}""")
    try:
        H.wait("spoke-c on hub-b", lambda: hub_in_use(H, "spoke-c") == "hub-b", timeout=10)
        time.sleep(2)
        assert hub_in_use(H, "spoke-a") == "hub" and hub_in_use(H, "spoke-b") == "hub"
        # (each within the probes' window and a reconcile: two unanswered probes mark the cut)
        H.wait("spoke-a <-> spoke-c", lambda: H.ping("spoke-a", H.ip("spoke-c"), count=2), timeout=10)
        H.wait("spoke-c <-> spoke-b", lambda: H.ping("spoke-c", H.ip("spoke-b"), count=2), timeout=10)
        assert H.ping("spoke-a", H.ip("spoke-b"), count=3)
        c_key = lab.pubkey(H.nodes["spoke-c"], "--overlay")
        H.wait("spoke-a to reach spoke-c through hub-b",
               lambda: H.wg_peers("spoke-a")[c_key]["endpoint"].startswith("10.90.0."), timeout=10)
        b_key = lab.pubkey(H.nodes["spoke-b"], "--overlay")
        assert H.wg_peers("spoke-a")[b_key]["endpoint"].startswith("10.89.0.")
    finally:
        H.run("router", "nft", "delete", "table", "inet", "labcut", check=False)
    # healed: both ends of spoke-a <-> spoke-c are back on hub with no traffic between them (no
    # overlay keepalives either): each end's move back is followed by an echo that the other
    # end's WireGuard roams on
    H.wait("spoke-c back on hub", lambda: hub_in_use(H, "spoke-c") == "hub", timeout=15)
    a_key = lab.pubkey(H.nodes["spoke-a"], "--overlay")
    H.wait("spoke-a and spoke-c to reach each other through hub again",
           lambda: H.wg_peers("spoke-a")[c_key]["endpoint"].startswith("10.89.0.")
           and H.wg_peers("spoke-c")[a_key]["endpoint"].startswith("10.89.0."), timeout=10)


def test_a_pair_left_on_the_other_hub_is_put_back(both_hubs_back: Lab) -> None:
    """Both ends' endpoints for each other through hub-b while both prefer hub, as roaming leaves
    them when a packet sent before one end's move arrives after the other's nudge (seen in CI):
    roaming alone would keep them there (hub-b works); the daemons put them back on hub."""
    H = both_hubs_back
    a_key, b_key = lab.pubkey(H.nodes["spoke-a"], "--overlay"), lab.pubkey(H.nodes["spoke-b"], "--overlay")
    via_b = {"spoke-a": ("10.90.0.12:51821", b_key), "spoke-b": ("10.90.0.11:51821", a_key)}
    logs = {s: Path(H.nodes[s].dir) / "dvpnd.log" for s in via_b}
    sizes = {s: len(p.read_text(errors="replace")) for s, p in logs.items()}
    for s, (ep, key) in via_b.items():
        H.run(s, "wg", "set", "wg0", "peer", key, "endpoint", ep)
    assert H.ping("spoke-a", H.ip("spoke-b"), count=2)  # (through hub-b, which works)
    assert H.wg_peers("spoke-a")[b_key]["endpoint"].startswith("10.90.0.")
    t0 = time.monotonic()
    H.wait("spoke-a and spoke-b back on hub's paths", lambda:
           H.wg_peers("spoke-a")[b_key]["endpoint"].startswith("10.89.0.")
           and H.wg_peers("spoke-b")[a_key]["endpoint"].startswith("10.89.0."), timeout=20)
    print(f"\npair put back on hub after {time.monotonic() - t0:.1f} s")
    assert any("off its preferred path" in logs[s].read_text(errors="replace")[sizes[s]:] for s in logs)
    assert H.ping("spoke-a", H.ip("spoke-b"), count=2)


def test_both_hubs_down_then_one_back(both_hubs_back: Lab) -> None:
    H = both_hubs_back
    kill_hub(H, "hub")
    kill_hub(H, "hub-b")
    assert not H.ping("spoke-a", H.ip("spoke-b"), count=2)
    revive_hub(H, "hub-b")
    t0 = time.monotonic()
    H.wait("spoke-a to reach spoke-b through hub-b", lambda: H.ping("spoke-a", H.ip("spoke-b"), count=1),
           timeout=15, step=0.1)
    print(f"\nboth hubs down, hub-b back: traffic again {time.monotonic() - t0:.1f}s after it was ready")
    # spoke-a's own move follows its next answered probe: the ping can come first, since spoke-b,
    # moved already, sends through hub-b and spoke-a's WireGuard roams to it (seen in CI)
    H.wait("spoke-a on hub-b", lambda: hub_in_use(H, "spoke-a") == "hub-b", timeout=3, step=0.1)


def test_a_roster_change_while_a_hub_is_down_reaches_it_when_it_returns(both_hubs_back: Lab) -> None:
    """The operator removes spoke-c while hub-b is down and publishes on hub only. hub-b comes
    back with the old roster (spoke-c's transit peer still on it): spoke-c reaches no one through
    it, and the spokes hand hub-b the new roster within seconds."""
    H = both_hubs_back
    auth = lab.authority()
    old = auth.current()
    assert old is not None
    c = old.member("spoke-c")
    assert c is not None
    kill_hub(H, "hub-b")
    try:
        H.dvpnctl("outside", "roster", "remove", "spoke-c", "--dir", str(auth.dir))
        lab.publish(H.nodes["hub"], auth.roster_file)
        new_serial = H.status("hub")["roster"]["serial"]
        H.wait("spoke-a to drop spoke-c", lambda: c.overlay_key not in H.wg_peers("spoke-a"), timeout=10)
        revive_hub(H, "hub-b")
        assert not H.ping("spoke-c", H.ip("spoke-a"), count=2)
        H.wait("hub-b to get the new roster from the spokes",
               lambda: H.status("hub-b")["roster"]["serial"] == new_serial, timeout=15)
        H.wait("hub-b to drop spoke-c", lambda: c.transit_key not in H.wg_peers("hub-b"), timeout=10)
        # and spoke-c still reaches no one, whichever hub it tries
        kill_hub(H, "hub")
        assert not H.ping("spoke-c", H.ip("spoke-a"), count=2)
        assert H.ping("spoke-a", H.ip("spoke-b"), count=3)  # through hub-b, for the members
    finally:
        revive_hub(H, "hub")
        H.dvpnctl("outside", "roster", "add", "spoke-c", "--dir", str(auth.dir), "--address", H.ip("spoke-c"),
                  "--transit-key", c.transit_key, "--overlay-key", c.overlay_key)
        for name in ("hub", "hub-b"):
            lab.publish(H.nodes[name], auth.roster_file)
        H.wait("spoke-c back", lambda: H.ping("spoke-c", H.ip("spoke-a"), count=1), timeout=30)
