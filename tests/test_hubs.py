"""More than one hub, the pure parts: the config, the judge of the hubs' health, the paths the
selector offers, and the probe's wire format."""

from __future__ import annotations

import base64
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from dvpnd.config.load import load_config
from dvpnd.config.model import ProbeConfig
from dvpnd.errors import ConfigError
from dvpnd.overlay import plan
from dvpnd.overlay.health import HubJudge, parse_reply, render_echo
from dvpnd.overlay.paths import Strays
from dvpnd.roster.model import Member
from tests.test_config import K1, K2, K3

AUTH = base64.b64encode(bytes(range(32))).decode()
TWO = f"""\
role: spoke
name: spoke-a
overlay: {{address: 10.88.0.11, mode: confidential, authority: "{AUTH}"}}
hubs:
  - {{name: hub, public_key: "{K1}", endpoint: "192.0.2.10:51820"}}
  - {{name: hub-b, public_key: "{K2}", endpoint: "192.0.2.242:51820", transit_network: 10.90.0.0/24}}
"""


def _problems(tmp_path: Path, text: str) -> str:
    p = tmp_path / "dvpnd.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    return "\n".join(e.value.problems)


def test_two_hubs_load_in_order_with_a_transit_network_each(tmp_path: Path) -> None:
    p = tmp_path / "dvpnd.yaml"
    p.write_text(TWO)
    c = load_config(p)
    assert [h.name for h in c.hubs] == ["hub", "hub-b"]
    assert [str(n) for n in c.transit_networks] == ["10.89.0.0/24", "10.90.0.0/24"]
    assert str(c.transit_address_via(c.hubs[1], c.address)) == "10.90.0.11"
    assert plan.transit_link(c).addresses == frozenset({"10.89.0.11/24", "10.90.0.11/24"})


def test_two_hubs_are_refused_in_routed_mode_and_each_needs_its_own_network(tmp_path: Path) -> None:
    routed = TWO.replace(', mode: confidential, authority: "' + AUTH + '"', "").replace(
        ", transit_network: 10.90.0.0/24", "")
    assert "more than one hub needs overlay.mode: confidential" in _problems(tmp_path, routed)
    assert "hubs[1].transit_network: is required" in _problems(
        tmp_path, TWO.replace(", transit_network: 10.90.0.0/24", ""))
    assert "overlaps hubs[0]'s transit network" in _problems(tmp_path, TWO.replace("10.90.0.0/24", "10.89.0.0/24"))
    assert "another hub in the list has this key" in _problems(tmp_path, TWO.replace(K2, K1))
    assert "either hub (one) or hubs" in _problems(
        tmp_path, TWO + f"hub: {{public_key: \"{K3}\", endpoint: \"192.0.2.1:51820\"}}\n")
    assert "probe.window" in _problems(tmp_path, TWO + "probe: {interval: 1, window: 1}\n")


PROBE = ProbeConfig(interval=0.2, window=1.0, holddown=10.0)


def test_the_judge_fails_over_at_once_and_back_only_after_the_hold_down() -> None:
    j = HubJudge([("A", "hub"), ("B", "hub-b")], PROBE, started=100.0)
    choice, moved = j.judge(100.0)
    assert choice is not None and choice.active == "A" and not moved
    for t in (100.2, 100.4, 100.6, 100.8, 101.0, 101.2):  # only B answers
        j.answered("B", t)
    choice, moved = j.judge(101.3)
    assert choice is not None and choice.active == "B" and moved and choice.usable == frozenset({"B"})
    assert "no answer through hub" in j.reason and j.failovers == 1
    # A answers again: usable at once (paths roamed there may stay), used again after the hold-down
    for t in range(1, 120):
        j.answered("A", 101.3 + t * 0.1)
        j.answered("B", 101.3 + t * 0.1)
        choice, moved = j.judge(101.3 + t * 0.1)
        assert choice is not None
        if t * 0.1 < PROBE.holddown - 0.05:
            assert choice.active == "B" and "A" in choice.usable and not moved
    assert choice.active == "A" and j.failovers == 2


def test_the_judge_never_leaves_a_working_hub_for_a_later_one() -> None:
    """Both hubs down; hub-b comes back a moment before hub. The overlay goes to hub-b (the first
    that works), then to hub once hub has been up for the hold-down: one move back, not three
    (a lab run went hub-b -> hub at once -> hub-b when hub-b's hold-down ended first -> hub)."""
    j = HubJudge([("A", "hub"), ("B", "hub-b")], PROBE, started=0.0)
    choice, moved = j.judge(5.0)
    assert choice is not None and choice.active == "A" and not moved  # nothing answers: stays
    j.answered("B", 9.9)
    choice, moved = j.judge(9.9)
    assert choice is not None and choice.active == "B" and moved
    actives = []
    for t in range(100, 260):
        now = t / 10
        j.answered("A", now)
        j.answered("B", now)
        choice, moved = j.judge(now)
        assert choice is not None
        actives.append(choice.active)
        if moved:
            assert now >= 10.0 + PROBE.holddown - 1e-9
    assert actives[0] == "B" and actives[-1] == "A"
    assert sum(1 for x, y in zip(actives, actives[1:], strict=False) if x != y) == 1  # one move, after hub's hold-down


def test_the_judge_stays_put_when_nothing_answers() -> None:
    """A lone spoke, or the whole overlay down: no hub is better than another; no flapping."""
    j = HubJudge([("A", "hub"), ("B", "hub-b")], PROBE, started=0.0)
    for t in range(1, 50):
        choice, moved = j.judge(t * 0.5)
        assert choice is not None and choice.active == "A" and not moved


def _member(n: int) -> Member:
    return Member(name=f"spoke-{n}", address=IPv4Address(f"10.88.0.{n}"), transit_key=K1, overlay_key=K2)


def test_paths_keep_a_roamed_endpoint_through_a_working_hub_and_leave_a_dead_one(tmp_path: Path) -> None:
    p = tmp_path / "dvpnd.yaml"
    p.write_text(TWO)
    c = load_config(p)
    m = _member(12)
    via_a, via_b = "10.89.0.12:51821", "10.90.0.12:51821"
    both = plan.HubChoice(active=K1, usable=frozenset({K1, K2}))
    paths = plan.peer_paths(c, m, both)
    assert paths.endpoints == (via_a, via_b)
    assert paths.choose(via_b) is None  # the peer roamed through hub-b, which works: left alone
    assert paths.choose(None) == via_a
    a_dead = plan.HubChoice(active=K2, usable=frozenset({K2}))
    assert plan.peer_paths(c, m, a_dead).choose(via_a) == via_b
    # right after a change of hub, everyone is put on the new hub's path, once
    moved = plan.HubChoice(active=K1, usable=frozenset({K1, K2}), moved=True)
    assert plan.peer_paths(c, m, moved).choose(via_b) == via_a


def test_a_member_cut_off_from_one_hub_is_reached_through_the_other(tmp_path: Path) -> None:
    """hub works for this spoke but not for member 12 (the router drops hub <-> that member): the
    judge marks that one path out after two probes unanswered for a whole window each, and the
    selector moves member 12 alone to hub-b, even though hub is active and a roamed endpoint there
    would otherwise stay."""
    p = tmp_path / "dvpnd.yaml"
    p.write_text(TWO)
    c = load_config(p)
    j = HubJudge([(K1, "hub"), (K2, "hub-b")], PROBE, started=0.0)
    m12, m13 = _member(12), replace(_member(13), overlay_key=K3)
    for t in (0.2, 0.4):
        for member in (m12.overlay_key, m13.overlay_key):
            for hub in (K1, K2):
                j.sent(hub, member)
        j.answered(K1, t, m13.overlay_key)
        j.answered(K2, t, m13.overlay_key)
        j.answered(K2, t, m12.overlay_key)  # 12 answers through hub-b only
        j.missed(K1, m12.overlay_key)  # (the prober, a window after each unanswered probe)
    choice, moved = j.judge(0.5)
    assert choice is not None and choice.active == K1 and not moved and choice.bad == {(m12.overlay_key, K1)}
    assert plan.peer_paths(c, m12, choice).choose("10.89.0.12:51821") == "10.90.0.12:51821"
    assert plan.peer_paths(c, m13, choice).choose("10.89.0.13:51821") is None
    j.answered(K1, 0.6, m12.overlay_key)  # the cut heals: back on hub once, as after a failback
    choice, moved = j.judge(0.7)
    assert choice is not None and not choice.bad and choice.moved and not moved  # (no failover)
    assert plan.peer_paths(c, m12, choice).choose("10.90.0.12:51821") == "10.89.0.12:51821"
    choice, _ = j.judge(0.8)  # then roaming may keep any working hub again
    assert choice is not None and not choice.moved
    assert plan.peer_paths(c, m12, choice).choose("10.90.0.12:51821") is None


def test_no_hub_wins_by_handshaking_first_when_the_probes_begin() -> None:
    """Seen in the lab: dvpnd started a little slower, the first window passed before any tunnel
    had handshaken, and the hub that answered first (hub-b) took the overlay."""
    from dvpnd.overlay.health import STARTUP_GRACE

    j = HubJudge([(K1, "hub"), (K2, "hub-b")], PROBE, started=0.0)
    j.begin(3.0)  # the probes begin 3 s after dvpnd started
    j.answered(K2, 3.5, "m")  # hub-b's tunnel is up first
    choice, moved = j.judge(3.6)
    assert choice is not None and choice.active == K1 and not moved
    j.answered(K1, 4.0, "m")
    assert j.judge(4.1)[0].active == K1  # type: ignore[union-attr]
    # a hub that never answers is left once the grace is over
    j2 = HubJudge([(K1, "hub"), (K2, "hub-b")], PROBE, started=0.0)
    j2.begin(3.0)
    for t in (3.5, 4.5, 6.0, 7.5, 8.0 + STARTUP_GRACE):
        j2.answered(K2, t, "m")
    choice, moved = j2.judge(8.0 + STARTUP_GRACE + 0.01)
    assert choice is not None and choice.active == K2 and moved


def test_the_grace_begins_with_the_first_member_to_probe_not_with_dvpnd() -> None:
    """Seen in CI: the prober started with no roster yet (nobody to probe: no evidence against
    any hub), and those rounds wiped the grace; when the roster came, the first window passed
    before the fellow spokes' tunnels were up, and hub-b, answering first, took the overlay."""
    from dvpnd.overlay.health import STARTUP_GRACE

    j = HubJudge([(K1, "hub"), (K2, "hub-b")], PROBE, started=0.0)
    for t in (0.0, 0.2, 4.8):
        j.targets_seen(t, False)  # the roster is not there yet
    j.targets_seen(5.0, True)  # it is: the probes begin
    j.answered(K2, 6.5, "m")  # hub-b's path answers first
    j.targets_seen(6.6, True)
    choice, moved = j.judge(6.6)
    assert choice is not None and choice.active == K1 and not moved
    assert all(h.up and (h.last_answer_age or 0) >= 0 for h in j.view(6.6))
    j.answered(K1, 7.0, "m")
    assert j.judge(7.1) == (j.judge(7.1)[0], False) and j.active == K1
    # a member gone and back (a lone spoke again, then a fellow): the grace again, for every hub
    j.targets_seen(20.0, False)
    j.targets_seen(21.0, True)
    j.answered(K2, 22.0, "m")
    assert j.judge(22.1)[0].active == K1  # type: ignore[union-attr]
    # and a hub that never answers is still left once the grace is over
    for t in (23.0, 24.0, 25.0, 26.0, 21.0 + STARTUP_GRACE + 0.5):
        j.answered(K2, t, "m")
    choice, moved = j.judge(21.0 + STARTUP_GRACE + PROBE.window + 0.01)
    assert choice is not None and choice.active == K2 and moved


def test_a_late_answer_is_no_miss_and_only_a_whole_window_unanswered_is() -> None:
    """Seen in CI: on a busy machine an echo came back after the next probe to the same member
    had gone out, and counting probes sent (not probes overdue) marked a working path out."""
    from dvpnd.overlay.health import Prober

    j = HubJudge([(K1, "hub"), (K2, "hub-b")], PROBE, started=0.0)
    p = Prober(j, lambda: [], lambda choice: None, clock=lambda: 0.0)
    w = PROBE.window
    p.pending = {1: (K1, "m", 0.0), 2: (K1, "m", 0.4), 3: (K2, "m", 0.4)}
    p.expire(w * 0.9)  # both still within their window: no miss, however many are out
    assert not j.misses and len(p.pending) == 3
    j.answered(K1, w, "m")  # (a late answer: it resets, as it should)
    p.pending.pop(1)
    p.expire(0.4 + w * 1.01)  # 2 and 3 unanswered for a whole window
    assert j.misses == {("m", K1): 1, ("m", K2): 1} and not p.pending
    choice, _ = j.judge(0.4 + w * 1.01)
    assert choice is not None and not choice.bad  # one miss is not a cut


def test_with_every_path_out_the_device_is_left_as_it_is(tmp_path: Path) -> None:
    """Found in the VM test: a spoke that has just listed two hubs, whose fellow spokes do not
    answer its probes yet, had every path marked out; the selector then "changed" each peer to
    the endpoint it already had, the read-back showed the same difference, and the reconcile
    failed on every pass (dvpnd never became ready)."""
    p = tmp_path / "dvpnd.yaml"
    p.write_text(TWO)
    c = load_config(p)
    m = _member(12)
    all_out = plan.HubChoice(active=K1, usable=frozenset({K1}), bad=frozenset({(m.overlay_key, K1),
                                                                                (m.overlay_key, K2)}))
    paths = plan.peer_paths(c, m, all_out)
    assert paths.choose("10.89.0.12:51821") is None
    assert paths.choose("10.90.0.12:51821") == "10.89.0.12:51821"


def test_a_lone_spoke_keeps_its_hubs_up() -> None:
    """Nobody to probe through the hubs: no evidence against them (not "down", not degraded)."""
    j = HubJudge([(K1, "hub"), (K2, "hub-b")], PROBE, started=0.0)
    j.no_targets(5.0)
    choice, moved = j.judge(5.5)
    assert choice is not None and choice.usable == {K1, K2} and not moved
    assert all(h.up for h in j.view(5.5))


def test_the_probe_is_an_icmp_echo_with_a_valid_checksum() -> None:
    echo = render_echo(0x1234, 7)
    words = [int.from_bytes(echo[i:i + 2], "big") for i in range(0, len(echo), 2)]
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF and echo[0] == 8
    reply = bytes([0x45]) + bytes(19) + bytes([0]) + echo[1:]
    assert parse_reply(reply) == (0x1234, 7)
    assert parse_reply(bytes([0x45]) + bytes(19) + echo) is None  # a request is not an answer
    assert parse_reply(b"\x45") is None


def test_hub_add_and_remove_edit_a_spokes_config_and_refuse_what_the_loader_would(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dvpnd.cli.main import main

    p = tmp_path / "dvpnd.yaml"
    one = TWO.split("hubs:")[0] + f'hub: {{public_key: "{K1}", endpoint: "192.0.2.10:51820"}}\n'
    p.write_text(one)
    # a second hub without its transit network: refused by the loader, the file untouched
    assert main(["hub", "add", "hub-b", "--public-key", K2, "--endpoint", "192.0.2.242:51820",
                 "--config", str(p)]) == 2
    assert p.read_text() == one
    assert "transit_network: is required" in capsys.readouterr().err
    assert main(["hub", "add", "hub-b", "--public-key", K2, "--endpoint", "192.0.2.242:51820",
                 "--transit-network", "10.90.0.0/24", "--config", str(p)]) == 0
    c = load_config(p)
    assert [h.name for h in c.hubs] == ["hub", "hub-b"] and (tmp_path / "dvpnd.yaml.before-hub-edit").read_text() == one
    assert main(["hub", "add", "hub-c", "--public-key", K2, "--endpoint", "192.0.2.3:51820",
                 "--transit-network", "10.91.0.0/24", "--config", str(p)]) == 2  # the same key
    # the first hub retired: hub-b, with its own transit network, is the one left
    assert main(["hub", "remove", "hub", "--config", str(p)]) == 0
    c = load_config(p)
    assert [h.name for h in c.hubs] == ["hub-b"] and [str(n) for n in c.transit_networks] == ["10.90.0.0/24"]
    assert plan.peer_paths(c, _member(12), None).endpoints == ("10.90.0.12:51821",)
    assert main(["hub", "remove", "hub-b", "--config", str(p)]) == 2  # the only hub


def test_a_roamed_endpoint_after_the_write_is_no_failed_write() -> None:
    """Found by CI's VM run: at a failback the other end's packet arrived through the other hub
    between the write and the read-back, WireGuard roamed the endpoint back, and the reconcile
    was reported failed (the node degraded for a pass)."""
    from dvpnd.overlay.paths import PeerPaths
    from dvpnd.wireguard.device import DesiredDevice, DesiredPeer, DeviceChanges, PeerChange, settled

    owned = DesiredPeer(public_key=K2, name="b", allowed_ips=frozenset({"10.88.0.12/32"}), persistent_keepalive=0,
                        paths=PeerPaths(("10.89.0.12:51821", "10.90.0.12:51821")))
    hub = DesiredPeer(public_key=K1, name="hub", allowed_ips=frozenset({"10.89.0.0/24"}), endpoint="192.0.2.10:51820")
    desired = DesiredDevice(private_key=K3, listen_port=None, peers={K1: hub, K2: owned})
    left = DeviceChanges(peers=(PeerChange(K2, endpoint="10.89.0.12:51821"), PeerChange(K1, endpoint="192.0.2.10:51820"),
                                PeerChange(K2, allowed_ips=frozenset({"10.88.0.12/32"}))))
    assert [c.public_key for c in settled(left, desired).peers] == [K1, K2]  # only the roamed endpoint goes


def test_a_pair_left_on_a_hub_neither_prefers_is_straightened(tmp_path: Path) -> None:
    """Both ends' endpoints for each other through hub-b (a packet sent before a move arrived
    after the other end's nudge), both preferring hub: roaming alone would keep them there.
    After `limit` seconds off the first path, the peer is named, and its first path is written."""
    p = tmp_path / "c.yaml"
    p.write_text(TWO)
    c = load_config(p)
    m = _member(12)
    via_a, via_b = "10.89.0.12:51821", "10.90.0.12:51821"
    strays = Strays(limit=5.0)
    first = {m.overlay_key: via_a}
    assert strays.due({m.overlay_key: via_b}, first, 100.0) == frozenset()
    assert strays.due({m.overlay_key: via_b}, first, 104.9) == frozenset()
    # back on the first path in between: the clock starts again
    assert strays.due({m.overlay_key: via_a}, first, 105.0) == frozenset()
    assert strays.due({m.overlay_key: via_b}, first, 106.0) == frozenset()
    assert strays.due({m.overlay_key: via_b}, first, 111.0) == {m.overlay_key}
    assert strays.due({m.overlay_key: via_b}, first, 112.0) == frozenset()  # named once, then limit again
    assert strays.due({m.overlay_key: None}, first, 200.0) == frozenset()  # no endpoint yet: no stray
    both = plan.HubChoice(active=K1, usable=frozenset({K1, K2}))
    assert plan.peer_paths(c, m, both).choose(via_b) is None
    straight = plan.HubChoice(active=K1, usable=frozenset({K1, K2}), straighten=frozenset({m.overlay_key}))
    assert plan.peer_paths(c, m, straight).choose(via_b) == via_a
    other = plan.HubChoice(active=K1, usable=frozenset({K1, K2}), straighten=frozenset({"someone else"}))
    assert plan.peer_paths(c, m, other).choose(via_b) is None
