"""Reconciler.reconcile, the heart of the daemon, against the in-tree fakes: no root needed."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from dvpnd.config.load import load_config
from dvpnd.daemon.core import Daemon  # at import: a library probes `uname -p` then, and a unit test may not
from dvpnd.daemon.reconcile import Reconciler
from dvpnd.errors import BackendError
from dvpnd.testing.fakes import FakeBackend, install
from dvpnd.wireguard.device import DeviceChanges, DeviceState
from dvpnd.wireguard.keys import encode_key, generate_private_key

from .test_config import HUB, K1, K2, K3, write


def reconciler(tmp_path: Path, text: str = HUB, raw: str | None = None) -> tuple[Reconciler, FakeBackend]:
    config = load_config(write(tmp_path, text + f"state_dir: {tmp_path / 'state'}\n"))
    backend = FakeBackend(raw=raw)
    r = Reconciler(config, backend=backend)
    r.load_key()
    return r, backend


def daemon_on_a_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Daemon, FakeBackend]:
    """A hub's Daemon whose device is a FakeBackend, its key loaded."""
    install(monkeypatch)
    f = write(tmp_path, HUB + f"state_dir: {tmp_path / 'state'}\n")
    d = Daemon(f, load_config(f))
    dev = FakeBackend()
    d.reconciler.backend = dev
    d.reconciler.load_key()
    return d, dev


def test_the_first_pass_writes_everything_the_second_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links, fw = install(monkeypatch)
    r, dev = reconciler(tmp_path)
    first = r.reconcile(now=1000.0)
    assert first.wg_changes and first.link_changed and first.firewall_changed
    assert dev.writes == 1 and links.forwarding and fw.table is not None
    assert dev.state is not None and set(dev.state.peers) == {p.public_key for p in r.config.peers}
    assert links.link.up and links.link.addresses == {"10.88.0.1/24"}
    second = r.reconcile(now=1001.0)
    assert not second.wg_changes and not second.link_changed and not second.firewall_changed
    assert dev.writes == 1 and links.applies == 1 and len(fw.batches) == 1


def test_a_pass_with_nothing_to_do_reads_the_device_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full read of a 5,000-peer device costs about what `wg show dump` does: the check that
    the device exists (before the firewall) is the read the sync uses, not a second one."""
    install(monkeypatch)
    r, dev = reconciler(tmp_path)
    r.reconcile(now=1000.0)
    before = dev.reads
    r.reconcile(now=1001.0)
    assert dev.reads - before == 1 and dev.writes == 1
    dev.state = None  # the device gone (wireguard-go killed): made again, written, read back
    r.reconcile(now=1002.0)
    assert dev.writes == 2 and dev.state is not None and set(dev.state.peers) == {p.public_key for p in r.config.peers}


def test_a_device_that_does_not_take_the_write_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch)
    r, dev = reconciler(tmp_path)
    dev.create()
    dev.deaf = True
    with pytest.raises(BackendError, match="the device did not take the change"):
        r.reconcile(now=1000.0)


THREE = HUB + f"""\
  - name: spoke-b
    public_key: {K2}
    address: 10.88.0.12
  - name: spoke-c
    public_key: {K3}
    address: 10.88.0.13
"""


class OnePeerLies(FakeBackend):
    """A device that takes every write but silently drops the allowed IPs of spoke-b's peer."""

    def apply(self, changes: DeviceChanges) -> None:
        super().apply(changes)
        assert self.state is not None
        if K2 in self.state.peers:
            self.state = replace(self.state, peers={
                **self.state.peers, K2: replace(self.state.peers[K2], allowed_ips=frozenset())})


def test_the_read_back_decodes_only_what_was_written_and_still_catches_a_lie(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write's read-back verifies the peers written (and the device's own fields), decoding no
    other peer: one spoke added among thousands costs one peer's decoding, not thousands."""
    install(monkeypatch)
    r, dev = reconciler(tmp_path, THREE)
    r.reconcile(now=1000.0)
    assert dev.state is not None and set(dev.state.peers) == {K1, K2, K3}
    asked: list[frozenset[str] | None] = []
    read = dev.read

    def spy(only: frozenset[str] | None = None) -> DeviceState:
        asked.append(only)
        return read(only)

    monkeypatch.setattr(dev, "read", spy)
    gone = dev.state.peers[K1]
    dev.state = replace(dev.state, peers={k: p for k, p in dev.state.peers.items() if k != K1})  # removed by hand
    result = r.reconcile(now=1001.0)
    assert [c.public_key for c in result.wg_changes.peers] == [K1]
    assert asked[-1] == frozenset({K1})  # the read-back: that peer only
    assert result.device is not None and set(result.device.peers) == {K1, K2, K3}  # the others as read before
    assert dev.state.peers[K1] == gone
    # a device that drops what it was told about one peer is caught, on that peer
    liar = OnePeerLies()
    liar.state = replace(dev.state, peers={k: p for k, p in dev.state.peers.items() if k != K2})
    r.backend = liar
    with pytest.raises(BackendError, match="the device did not take the change"):
        r.reconcile(now=1002.0)


def test_a_firewall_changed_by_hand_is_applied_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, fw = install(monkeypatch)
    r, _ = reconciler(tmp_path)
    r.reconcile(now=1000.0)
    assert fw.table is not None
    fw.table = fw.table[:-1]  # a rule deleted by hand
    assert r.reconcile(now=1001.0).firewall_changed and len(fw.batches) == 2
    fw.table = None  # the whole table deleted
    assert r.reconcile(now=1002.0).firewall_changed and len(fw.batches) == 3
    assert not r.reconcile(now=1003.0).firewall_changed


def test_a_rejected_firewall_keeps_the_tunnel_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, fw = install(monkeypatch)
    r, dev = reconciler(tmp_path)
    fw.reject = "nftables rejected the batch: Error: Could not process rule"
    result = r.reconcile(now=1000.0)
    assert not result.firewall_changed and result.wg_changes and dev.writes == 1
    assert r.firewall_state.error == fw.reject


def test_a_new_peer_is_one_write_of_that_peer_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch)
    r, dev = reconciler(tmp_path)
    r.reconcile(now=1000.0)
    r.config = load_config(write(tmp_path, HUB + f"  - name: spoke-b\n    public_key: {K2}\n    address: 10.88.0.12\n"
                                 + f"state_dir: {tmp_path / 'state'}\n"))
    result = r.reconcile(now=1001.0)
    assert [c.public_key for c in result.wg_changes.peers] == [K2] and result.wg_changes.peers[0].create
    assert dev.writes == 2 and not r.reconcile(now=1002.0).wg_changes


def test_rekey_applies_a_new_key_and_refuses_a_bad_one_keeping_the_old(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    d, dev = daemon_on_a_fake(tmp_path, monkeypatch)

    async def go() -> None:
        assert await d.reconcile("start")
        old = dev.state.private_key if dev.state else None
        key_file = d.config.wireguard.private_key_file
        new = encode_key(generate_private_key())
        key_file.write_text(new + "\n")
        outcome = await d.rekey()
        assert outcome.ok and not outcome.problems and dev.state is not None and dev.state.private_key == new != old
        key_file.write_text("not a key\n")
        outcome = await d.rekey()
        assert not outcome.ok and outcome.problems[0].startswith(f"{key_file}: the private key file")
        assert dev.state.private_key == new  # the device keeps the key in use

    asyncio.run(go())


def test_the_snapshot_after_a_pass_is_that_pass_s_read_not_another(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    d, dev = daemon_on_a_fake(tmp_path, monkeypatch)

    async def go() -> None:
        assert await d.reconcile("start")
        before = dev.reads
        assert await d.reconcile("nothing to do")
        assert dev.reads - before == 1  # the pass's own read; the snapshot took it
        assert d.snapshot.interface_up and {p.public_key for p in d.snapshot.peers} == set(dev.state.peers)

    asyncio.run(go())


@pytest.mark.parametrize("raw", ["uapi", "netlink"])
def test_a_hubs_quiet_pass_skips_the_parse_and_still_catches_every_drift(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """A hub's pass whose inputs and device configuration are as the last pass with nothing to do
    left them parses nothing (a thousand peers, every pass); a peer removed by hand, an allowed
    IP changed, a new config object or a new endpoint memory each bring the full pass back. The
    same on wireguard-go (its reply text) and on the kernel (its netlink replies)."""
    from dvpnd.wireguard import kernel, uapi

    install(monkeypatch)
    parses = []
    real_parse, real_kparse = uapi.parse_get, kernel.parse_device
    monkeypatch.setattr(uapi, "parse_get", lambda text: parses.append(1) or real_parse(text))
    monkeypatch.setattr(kernel, "parse_device", lambda name, msgs: parses.append(1) or real_kparse(name, msgs))
    r, dev = reconciler(tmp_path, raw=raw)
    assert r.reconcile(now=1000.0).wg_changes and dev.state is not None
    answer = dev.read_raw()  # (the fake's answer: what wireguard-go, or the kernel, answers)
    assert (real_parse(answer) if isinstance(answer, str) else real_kparse("wg0", answer or [])) == dev.state
    assert r.reconcile(now=1001.0).device is not None  # nothing to do: the next such pass may skip
    parses.clear()
    quiet = r.reconcile(now=1002.0)
    assert quiet.device is None and not quiet.wg_changes and not parses and dev.writes == 1
    key = next(iter(dev.state.peers))
    busy = replace(dev.state.peers[key], last_handshake=1500.5, rx_bytes=10**9, endpoint=None)
    dev.state = replace(dev.state, peers={**dev.state.peers, key: busy})  # traffic: counters, handshakes
    assert r.reconcile(now=1003.0).device is None and not parses

    dev.state = replace(dev.state, peers={k: p for k, p in dev.state.peers.items() if k != key})  # by hand
    again = r.reconcile(now=1004.0)
    assert again.device is not None and again.wg_changes and key in dev.state.peers and dev.writes == 2
    r.reconcile(now=1005.0)
    parses.clear()
    assert r.reconcile(now=1006.0).device is None and not parses

    other = replace(dev.state.peers[key], allowed_ips=frozenset({"10.88.0.99/32"}))
    dev.state = replace(dev.state, peers={**dev.state.peers, key: other})
    assert r.reconcile(now=1007.0).wg_changes and dev.state.peers[key].allowed_ips != {"10.88.0.99/32"}

    for change in (lambda: setattr(r, "config", replace(r.config)),  # a reload: an equal but new config
                   lambda: r.endpoint_memory.remember({k: "192.0.2.77:51820" for k in dev.state.peers})):
        r.reconcile(now=1008.0)
        assert r.reconcile(now=1009.0).device is None
        change()
        parses.clear()
        assert r.reconcile(now=1010.0).device is not None and parses


def test_a_hub_parses_every_pass_while_a_spoke_rotates_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder of a rotating spoke's address follows the handshakes, which no digest covers."""
    install(monkeypatch)
    new = encode_key(generate_private_key())
    r, dev = reconciler(tmp_path, HUB.replace(f"public_key: {K1}", f"public_key: {K1}\n    next_public_key: {new}"),
                        raw="uapi")
    assert r.pending_rotations()
    for t in range(4):
        assert r.reconcile(now=1000.0 + t).device is not None
