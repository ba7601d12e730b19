"""The signed roster: verification, the policy (serials, expiry), durable state, the keeper with a
clock the test moves, and the two layers planned from it."""

from __future__ import annotations

import json
import time
import tracemalloc
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from dvpnd.config.load import load_config
from dvpnd.daemon.rosterkeeper import RosterKeeper
from dvpnd.overlay import plan
from dvpnd.overlay.paths import PeerPaths
from dvpnd.roster.authority import Authority, Ed25519Verifier, verify_document
from dvpnd.roster.model import MAX_MEMBERS, Member, Roster, RosterError, judge, parse_payload, render_payload
from dvpnd.wireguard.device import DeviceState, PeerState, diff_device
from dvpnd.wireguard.keys import encode_key, generate_private_key, public_key

NET = IPv4Network("10.88.0.0/24")


def key() -> str:
    return encode_key(public_key(generate_private_key()))


def member(i: int, name: str | None = None) -> Member:
    return Member(name or f"spoke-{i}", IPv4Address(f"10.88.0.{10 + i}"), key(), key())


def roster(serial: int = 1, n: int = 3, now: int | None = None, valid: int = 86400) -> Roster:
    now = int(time.time()) if now is None else now
    return Roster(NET, serial, now, now + valid, tuple(member(i + 1) for i in range(n)))


@pytest.fixture
def auth(tmp_path: Path) -> Authority:
    a = Authority(tmp_path / "authority")
    a.init()
    return a


def test_a_signed_roster_verifies_and_any_change_breaks_it(auth: Authority) -> None:
    r = roster()
    doc = auth.sign(r)
    got, _ = verify_document(doc, Ed25519Verifier(auth.public()), "doc")
    assert got == replace(r, members=tuple(sorted(r.members, key=lambda m: m.address)))
    tampered = json.loads(doc)
    tampered["payload"] = tampered["payload"].replace(r.members[0].overlay_key, key())
    with pytest.raises(RosterError) as e:
        verify_document(json.dumps(tampered).encode(), Ed25519Verifier(auth.public()), "doc")
    assert e.value.reason == "signature"
    other = Authority(auth.dir.parent / "other")
    with pytest.raises(RosterError) as e:
        verify_document(doc, Ed25519Verifier(other.init()), "/etc/dvpn/roster.json")
    assert e.value.reason == "signature" and "/etc/dvpn/roster.json" in str(e.value)


@pytest.mark.parametrize("change, words", [
    (lambda ms: ms + (replace(ms[0], name="other"),), "also"),                                  # one key twice
    (lambda ms: ms + (replace(member(9), address=ms[0].address),), "address 10.88.0.11 is also spoke-1's"),
    (lambda ms: ms + (member(9, name="Not_A_Label"),), "not a DNS label"),
    (lambda ms: ms + (member(9, name="x" * 64),), "not a DNS label"),
    (lambda ms: ms + (replace(member(9), address=IPv4Address("10.88.0.1")),), "not a member address"),
    (lambda ms: ms + (replace(member(9), address=IPv4Address("10.99.0.5")),), "not a member address"),
    (lambda ms: ms + (replace(member(9), overlay_key="A" * 43 + "="),), "all-zero"),
    (lambda ms: ms + (replace(member(9), aliases=("spoke-1",)),), "name spoke-1 is also spoke-1's"),
    (lambda ms: (replace(ms[0], aliases=("pg",)), replace(ms[1], aliases=("pg",))), "name pg is also spoke-1's"),
    (lambda ms: ms + (replace(member(9), aliases=("Bad_Alias",)),), "alias 'Bad_Alias' is not a DNS label"),
    (lambda ms: ms + (replace(member(9), aliases=tuple(f"a{i}" for i in range(9))),), "aliases must be a list of 1 to 8"),
])
def test_a_bad_member_refuses_the_whole_roster_naming_it(auth: Authority, change, words) -> None:  # type: ignore[no-untyped-def]
    r = roster()
    bad = replace(r, members=change(r.members))
    with pytest.raises(RosterError) as e:
        verify_document(auth.sign(bad), Ed25519Verifier(auth.public()), "roster.json")
    assert e.value.reason == "malformed" and words in str(e.value) and "roster.json: members[" in str(e.value)


def test_aliases_are_signed_and_a_roster_without_them_is_unchanged(auth: Authority) -> None:
    r = roster()
    plain = render_payload(r)
    assert b"aliases" not in plain  # rosters signed before aliases verify byte for byte as before
    with_alias = replace(r, members=(replace(r.members[0], aliases=("pg-a", "db")), *r.members[1:]))
    got, _ = verify_document(auth.sign(with_alias), Ed25519Verifier(auth.public()), "doc")
    assert got.member("spoke-1").aliases == ("pg-a", "db")  # type: ignore[union-attr]
    doc = json.loads(auth.sign(with_alias))
    doc["payload"] = doc["payload"].replace('"pg-a"', '"pg-b"')
    with pytest.raises(RosterError) as e:  # an alias is as signed as the member's keys
        verify_document(json.dumps(doc).encode(), Ed25519Verifier(auth.public()), "doc")
    assert e.value.reason == "signature"


def test_oversized_or_nested_documents_are_refused_before_any_signature_work(auth: Authority) -> None:
    v = Ed25519Verifier(auth.public())
    for data in (b"[" * 100_000, b"{" * 50 + b"}" * 50, b"x" * (3 << 20), b"\xff\xfe", b"null"):
        with pytest.raises(RosterError) as e:
            verify_document(data, v, "d")
        assert e.value.reason == "malformed"
    too_many = json.dumps({"network": str(NET), "serial": 1, "issued": 1, "expires": 2,
                           "members": [{}] * (MAX_MEMBERS + 1)}).encode()
    with pytest.raises(RosterError, match="more than"):
        parse_payload(too_many, "d")


def test_serials_never_go_back_and_expiry_refuses_only_on_arrival() -> None:
    now = 1_000_000
    r = roster(serial=5, now=now)
    p = render_payload(r)
    assert judge(r, p, network=NET, highest_serial=4, current_payload=None, now=now, origin="o") is True
    assert judge(r, p, network=NET, highest_serial=5, current_payload=p, now=now, origin="o") is False
    with pytest.raises(RosterError) as e:
        judge(r, p, network=NET, highest_serial=6, current_payload=None, now=now, origin="o")
    assert e.value.reason == "older"
    other = render_payload(replace(r, members=r.members[:1]))
    with pytest.raises(RosterError) as e:
        judge(r, other, network=NET, highest_serial=5, current_payload=p, now=now, origin="o")
    assert e.value.reason == "older"
    with pytest.raises(RosterError) as e:
        judge(r, p, network=NET, highest_serial=4, current_payload=None, now=r.expires, origin="o")
    assert e.value.reason == "expired"
    with pytest.raises(RosterError) as e:
        judge(r, p, network=IPv4Network("10.77.0.0/24"), highest_serial=0, current_payload=None, now=now, origin="o")
    assert e.value.reason == "network"


def _config(tmp_path: Path, auth: Authority, min_serial: int = 0) -> Path:
    cfg = tmp_path / "dvpnd.yaml"
    cfg.write_text(f"""role: spoke
name: spoke-1
state_dir: {tmp_path}/state
overlay: {{address: 10.88.0.11, mode: confidential, authority: "{auth.public()}", min_serial: {min_serial}}}
hub: {{public_key: "{key()}", endpoint: "192.0.2.10:51820"}}
""")
    return cfg


def test_the_keeper_with_a_moving_clock(tmp_path: Path, auth: Authority) -> None:
    clock = [1_000_000.0]
    config = load_config(_config(tmp_path, auth, min_serial=2))
    k = RosterKeeper(config, lambda: clock[0])
    r1 = roster(serial=1, now=int(clock[0]))
    with pytest.raises(RosterError, match="older than 2"):  # below the join settings' min_serial
        k.offer(auth.sign(r1), "hub")
    r2 = replace(r1, serial=2)
    assert k.offer(auth.sign(r2), "hub") is True
    assert k.store.highest_serial() == 2 and k.roster == parse_payload(render_payload(r2), "x")
    # time passes beyond the expiry: the roster in force stays in force, shown as expired
    clock[0] = r2.expires + 3600
    assert k.view(None).expired(clock[0]) and k.roster is not None
    # a new roster that arrives expired is refused; a renewed one is taken
    with pytest.raises(RosterError) as e:
        k.offer(auth.sign(replace(r2, serial=3)), "hub")
    assert e.value.reason == "expired"
    renewed = replace(r2, serial=4, issued=int(clock[0]), expires=int(clock[0]) + 86400)
    assert k.offer(auth.sign(renewed), "hub") is True
    assert k.view(None).refused == {"older": 1, "expired": 1}
    # a restart: the same roster from disk, and the serial still refuses a replay
    k2 = RosterKeeper(config, lambda: clock[0])
    assert k2.load() is not None and k2.roster is not None and k2.roster.serial == 4
    with pytest.raises(RosterError, match="older than 4"):
        k2.offer(auth.sign(replace(r2, serial=3, issued=int(clock[0]), expires=int(clock[0]) + 60)), "hub")
    # a node that lost its state still refuses what is below its min_serial
    (tmp_path / "state" / "roster.serial").unlink()
    (tmp_path / "state" / "roster.json").unlink()
    k3 = RosterKeeper(config, lambda: clock[0])
    assert k3.load() is None and k3.highest_serial() == 2


def test_a_thousand_members_verify_and_plan_in_bounded_memory(tmp_path: Path, auth: Authority) -> None:
    config = load_config(_config(tmp_path, auth))
    config = replace(config, network=IPv4Network("10.88.0.0/20"))
    members = tuple(Member(f"m{i}", IPv4Address(int(IPv4Address("10.88.0.11")) + i), key(), key())
                    for i in range(1000))
    r = Roster(IPv4Network("10.88.0.0/20"), 1, int(time.time()), int(time.time()) + 60, members)
    doc = auth.sign(r)
    tracemalloc.start()
    got, _ = verify_document(doc, Ed25519Verifier(auth.public()), "d")
    me = plan.Membership(got.members[0])
    dev = plan.render_overlay(config, encode_key(generate_private_key()), got, me)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(dev.peers) == 999 and peak < 20 << 20


def test_overlay_plan_no_keepalive_paths_and_the_selector_leaves_roaming_alone(tmp_path: Path, auth: Authority) -> None:
    config = load_config(_config(tmp_path, auth))
    r = roster()
    me = replace(r.members[0], address=IPv4Address("10.88.0.11"))
    r = replace(r, members=(me,) + r.members[1:])
    assert plan.own_membership(config, r, me.overlay_key).member == me
    assert "not in roster" in (plan.own_membership(config, r, key()).problem or "")
    dev = plan.render_overlay(config, "k", r, plan.Membership(me))
    assert set(dev.peers) == {m.overlay_key for m in r.members[1:]} and dev.listen_port == 51821
    p2 = dev.peers[r.members[1].overlay_key]
    assert p2.persistent_keepalive == 0 and p2.allowed_ips == {"10.88.0.12/32"}
    assert p2.paths == PeerPaths(("10.89.0.12:51821",))
    # not a member: no overlay peers at all
    assert plan.render_overlay(config, "k", r, plan.Membership(None, "x")).peers == {}
    # the diff: first the path; a device that roamed to one of the paths is left alone
    fresh = diff_device(dev, DeviceState(private_key="k", listen_port=51821))
    assert {c.endpoint for c in fresh.peers} == {"10.89.0.12:51821", "10.89.0.13:51821"}
    have = {k: PeerState(public_key=k, allowed_ips=p.allowed_ips, endpoint=p.paths.endpoints[0] if p.paths else None)
            for k, p in dev.peers.items()}
    assert not diff_device(dev, DeviceState(private_key="k", listen_port=51821, peers=have))
    moved = dict(have)
    k2 = r.members[1].overlay_key
    moved[k2] = replace(moved[k2], endpoint="203.0.113.9:4444")  # not one of its paths: put back
    assert [c.endpoint for c in diff_device(dev, DeviceState("k", None, 51821, 0, moved)).peers] == ["10.89.0.12:51821"]
    # the hub: transit keys and transit /32s only
    hub = plan.render_hub_transit(replace(config, role="hub"), "k", r)
    assert set(hub.peers) == {m.transit_key for m in r.members}
    assert all(next(iter(p.allowed_ips)).startswith("10.89.0.") for p in hub.peers.values())


@pytest.mark.parametrize("overlay, words", [
    ("{mode: confidential}", "overlay.authority: is required"),
    ("{mode: confidential, authority: nope}", "is not an Ed25519 public key"),
    ("{mode: confidential, authority: AUTH, mtu: 1400}", "between 1280 and 1340"),
    ("{mode: confidential, authority: AUTH, transit_network: 10.88.0.0/24}", "overlaps the overlay"),
    ("{mode: confidential, authority: AUTH, transit_network: 10.89.0.0/16}", "as large as the overlay"),
    ("{mode: confidential, authority: AUTH, transit_interface: wg0}", "must differ"),
    ("{mode: routed, min_serial: 3}", "is for overlay.mode: confidential"),
    ("{mode: blind}", "must be one of routed, confidential"),
])
def test_confidential_config_checks(tmp_path: Path, auth: Authority, overlay: str, words: str) -> None:
    from dvpnd.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"role: spoke\noverlay: {overlay.replace('AUTH', auth.public())}\n"
                   f"hub: {{public_key: '{key()}', endpoint: '192.0.2.10:51820'}}\n")
    text = cfg.read_text().replace("overlay: {", "overlay: {address: 10.88.0.11, ")
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert any(words in p for p in e.value.problems), e.value.problems


def test_a_confidential_hub_refuses_peers_d(tmp_path: Path, auth: Authority) -> None:
    from dvpnd.errors import ConfigError

    (tmp_path / "peers.d").mkdir()
    (tmp_path / "peers.d" / "a.yaml").write_text(f"public_key: '{key()}'\naddress: 10.88.0.11\n")
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(f"role: hub\noverlay: {{mode: confidential, authority: '{auth.public()}'}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert any("the signed roster names the spokes" in p for p in e.value.problems)


def test_the_authority_key_is_0600_and_never_replaced(auth: Authority) -> None:
    from dvpnd.errors import DvpnError

    assert auth.key_file.stat().st_mode & 0o777 == 0o600
    with pytest.raises(DvpnError, match="exists already"):
        auth.init()
    auth.key_file.chmod(0o644)
    with pytest.raises(DvpnError, match="mode 0600"):
        auth.public()


def test_wg_quick_files_for_a_laptop_carry_no_private_key(auth: Authority) -> None:
    from dvpnd.overlay.wgquick import render_wg_quick

    r = roster()
    files = render_wg_quick(r, r.members[0], key(), "hub.example.org:51820", IPv4Network("10.89.0.0/24"))
    t, o = files["dvpn-transit.conf"], files["dvpn.conf"]
    assert "Address = 10.89.0.11/24" in t and "AllowedIPs = 10.89.0.0/24" in t and "PersistentKeepalive = 25" in t
    assert "Address = 10.88.0.11/24" in o and "MTU = 1340" in o and "ListenPort = 51821" in o
    assert o.count("[Peer]") == 2 and "Endpoint = 10.89.0.12:51821" in o and "AllowedIPs = 10.88.0.13/32" in o
    assert "PersistentKeepalive" not in o and "PrivateKey" not in t + o


def test_publishing_a_bad_file_changes_nothing(tmp_path: Path, auth: Authority) -> None:
    """`dvpnctl roster publish` through the daemon: missing, a directory, a FIFO (no wait for a
    writer), oversized, garbage, another authority's; each refused as bad input, nothing adopted."""
    import asyncio
    import os

    from dvpnd.daemon.core import Daemon

    cfg = _config(tmp_path, auth)
    d = Daemon(cfg, load_config(cfg), clock=lambda: time.time())
    adopted: list[int] = []

    async def no_reconcile() -> None:
        adopted.append(1)

    d.roster_adopted = no_reconcile  # type: ignore[method-assign]
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_bytes(b" " * (5 << 20))
    (tmp_path / "junk").write_bytes(b"{not json")
    other = Authority(tmp_path / "other")
    other.init()
    (tmp_path / "other.json").write_bytes(other.sign(roster()))
    for name in ("missing", "", "fifo", "big", "junk", "other.json"):
        out = asyncio.run(asyncio.wait_for(d.roster_publish(str(tmp_path / name)), 10))
        assert not out.ok and out.bad_input and out.problems, (name, out)
    assert not adopted and d.rosters is not None and d.rosters.roster is None
    assert not (tmp_path / "state" / "roster.json").exists()
    good = roster()
    good = replace(good, members=(replace(good.members[0], address=IPv4Address("10.88.0.11")),) + good.members[1:])
    (tmp_path / "good.json").write_bytes(auth.sign(good))
    out = asyncio.run(d.roster_publish(str(tmp_path / "good.json")))
    assert out.ok and out.data["serial"] == 1 and adopted == [1]


def test_a_roster_is_verified_and_written_off_the_event_loop(tmp_path: Path, auth: Authority) -> None:
    """Adopting a roster verifies every member and fsyncs two files: in a worker thread, so the
    loop goes on answering DNS, the status page and the long polls meanwhile. Here the store's
    save waits until the loop has run on: on the loop it would wait in vain (5 s, then fail)."""
    import asyncio
    import threading

    from dvpnd.daemon.core import Daemon

    cfg = _config(tmp_path, auth)
    d = Daemon(cfg, load_config(cfg), clock=lambda: time.time())

    async def no_reconcile() -> None:
        pass

    d.roster_adopted = no_reconcile  # type: ignore[method-assign]
    assert d.rosters is not None
    store, loop_ran, seen = d.rosters.store, threading.Event(), {}
    real_save = store.save

    def save(document: bytes, serial: int) -> None:
        seen["thread"] = threading.get_ident()
        seen["released"] = loop_ran.wait(5)
        real_save(document, serial)

    store.save = save  # type: ignore[method-assign]
    good = roster()
    good = replace(good, members=(replace(good.members[0], address=IPv4Address("10.88.0.11")),) + good.members[1:])
    (tmp_path / "good.json").write_bytes(auth.sign(good))

    async def main() -> Any:
        seen["loop"] = threading.get_ident()
        publish = asyncio.create_task(d.roster_publish(str(tmp_path / "good.json")))
        while "thread" not in seen:
            await asyncio.sleep(0.01)
        loop_ran.set()
        return await publish

    out = asyncio.run(main())
    assert out.ok and seen["released"] and seen["thread"] != seen["loop"], seen
    assert d.rosters.roster is not None and d.rosters.roster.serial == 1 and d.rosters.etag is not None


def test_amend_refuses_a_bad_roster_without_signing_it(auth: Authority) -> None:
    first = auth.amend((member(1),), 3600, NET)
    assert first.serial == 1 and auth.current() == first
    before = auth.roster_file.read_bytes()
    with pytest.raises(RosterError, match="also"):
        auth.amend(first.members + (replace(member(2), address=first.members[0].address),), 3600)
    assert auth.roster_file.read_bytes() == before
    assert auth.amend(first.members + (member(2),), 3600).serial == 2


def test_dvpnctl_publish_hands_dvpnd_a_copy_it_can_read(tmp_path: Path, auth: Authority,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """dvpnd's unit hides /root, /home and /tmp from it: `dvpnctl roster publish ~/roster.json`
    reads the file itself and hands dvpnd a copy in dvpnd's state directory, removed afterwards;
    the daemon's complaints name the operator's file, not the copy."""
    import argparse
    import socket
    import threading

    from dvpnd.cli.common import BadInput
    from dvpnd.cli.roster import cmd_roster_publish
    from dvpnd.errors import DvpnError

    cfg = _config(tmp_path, auth)
    cfg.write_text(cfg.read_text() + f"control: {{socket: {tmp_path}/ctl.sock}}\n")
    (tmp_path / "state").mkdir()
    doc = auth.sign(roster())
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "roster.json").write_bytes(doc)
    seen: list[tuple[str, bytes]] = []
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(tmp_path / "ctl.sock"))
    srv.listen(2)

    def serve(answers: list[dict[str, object]]) -> None:
        for answer in answers:
            conn, _ = srv.accept()
            with conn:
                req = json.loads(conn.makefile("rb").readline())
                seen.append((req["file"], Path(req["file"]).read_bytes()))
                conn.sendall(json.dumps(answer).replace("{file}", req["file"]).encode() + b"\n")

    bad = {"ok": False, "bad_input": True, "problems": ["{file}: bad signature"]}  # as dvpnd names the copy
    t = threading.Thread(target=serve, args=([{"ok": True, "serial": 1, "members": 3, "adopted": True}, bad],))
    t.start()
    args = argparse.Namespace(config=cfg, file=tmp_path / "home" / "roster.json")
    try:
        assert cmd_roster_publish(args) == 0
        assert cmd_roster_publish(args) == 2
        assert f"dvpnctl: {tmp_path}/home/roster.json: bad signature" in capsys.readouterr().err
    finally:
        t.join(10)
        srv.close()
    assert all(Path(s).parent == tmp_path / "state" and Path(s).name.startswith("roster.offered.") for s, _ in seen)
    assert len(seen) == 2 and seen[0][1] == doc and seen[0][0] != seen[1][0]
    assert not list((tmp_path / "state").iterdir())  # every copy removed
    for missing in (tmp_path / "nothing.json", tmp_path):
        with pytest.raises(BadInput, match=str(missing)):
            cmd_roster_publish(argparse.Namespace(config=cfg, file=missing))
    (tmp_path / "state").rmdir()  # dvpnd never ran with this config: said, nothing written
    with pytest.raises(DvpnError, match=f"{tmp_path}/state: cannot hand dvpnd the roster"):
        cmd_roster_publish(args)


def test_dvpnctl_roster_aliases_are_checked_and_signed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dvpnd.cli.main import main
    from dvpnd.dns.names import render_names

    d = str(tmp_path / "auth")
    assert main(["authority", "init", "--dir", d]) == 0
    assert main(["roster", "add", "spoke-a", "--dir", d, "--transit-key", key(), "--overlay-key", key(),
                 "--alias", "pg-a", "--alias", "PG-A"]) == 0
    assert main(["roster", "add", "spoke-b", "--dir", d, "--transit-key", key(), "--overlay-key", key(),
                 "--alias", "pg-a"]) == 2  # spoke-a's already
    assert "name pg-a is also spoke-a's" in capsys.readouterr().err
    assert main(["roster", "add", "spoke-b", "--dir", d, "--transit-key", key(), "--overlay-key", key()]) == 0
    assert main(["roster", "alias", "spoke-b", "spoke-a", "--dir", d]) == 2  # another member's name
    assert "name spoke-a is also spoke-a's" in capsys.readouterr().err
    assert main(["roster", "alias", "spoke-b", "no_label", "--dir", d]) == 2
    assert "alias 'no_label' is not a DNS label" in capsys.readouterr().err
    assert main(["roster", "alias", "spoke-b", *(f"a{i}" for i in range(9)), "--dir", d]) == 2
    assert "aliases must be a list of 1 to 8" in capsys.readouterr().err
    serial = Authority(Path(d)).current().serial  # type: ignore[union-attr]
    assert main(["roster", "alias", "spoke-b", "pg-b", "db", "--dir", d]) == 0
    r = Authority(Path(d)).current()
    assert r is not None and r.serial == serial + 1
    assert [(m.name, m.aliases) for m in r.members] == [("spoke-a", ("pg-a",)), ("spoke-b", ("pg-b", "db"))]
    names = render_names("dvpn.internal", NET, r)
    assert names is not None and dict(names.listing())["pg-b.dvpn.internal"] == "10.88.0.12"
    assert dict(names.listing())["db.dvpn.internal"] == "10.88.0.12"
    assert main(["roster", "alias", "spoke-b", "--dir", d]) == 0  # none: cleared
    assert Authority(Path(d)).current().member("spoke-b").aliases == ()  # type: ignore[union-attr]
