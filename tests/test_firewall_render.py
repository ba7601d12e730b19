"""The rendered nftables document: one table, one transaction, sets instead of per-spoke rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dvpnd.config.load import load_config
from dvpnd.firewall import nft, ruleset
from dvpnd.wireguard.keys import encode_key
from tests.test_config import HUB, SPOKE, write


def hub_with(tmp_path: Path, n: int) -> str:
    lines = ["role: hub", "name: hub", "overlay:", "  network: 10.88.0.0/16", "peers:"]
    for i in range(n):
        key = encode_key((i + 1).to_bytes(4, "big") + bytes(28))  # not the all-zero key
        lines += [f"  - name: s{i}", f"    public_key: {key}", f"    address: 10.88.{(i + 2) // 250}.{(i + 2) % 250 + 2}"]
    return "\n".join(lines) + "\n"


def rules(batch: dict[str, Any], chain: str) -> list[list[Any]]:
    return [c["add"]["rule"]["expr"] for c in batch["nftables"]
            if "add" in c and "rule" in c["add"] and c["add"]["rule"]["chain"] == chain]


def test_batch_replaces_only_our_table_atomically(tmp_path: Path) -> None:
    batch = ruleset.render_ruleset(load_config(write(tmp_path, HUB)))
    cmds = batch["nftables"]
    assert cmds[0] == {"metainfo": {"json_schema_version": 1}}
    t = {"family": "inet", "name": "dvpn"}
    # add (so delete cannot fail), delete, rebuild: one transaction, no gap.
    assert cmds[1:4] == [{"add": {"table": t}}, {"delete": {"table": t}}, {"add": {"table": t}}]
    for c in cmds[4:]:
        (verb, obj), = c.items()
        assert verb == "add"
        (kind, body), = obj.items()
        assert (body["family"], body["table"]) == ("inet", "dvpn"), c
    assert not any("flush" in c for c in cmds)


def test_rule_count_does_not_grow_with_spokes(tmp_path: Path) -> None:
    small = ruleset.render_ruleset(load_config(write(tmp_path, hub_with(tmp_path, 10))))
    big = ruleset.render_ruleset(load_config(write(tmp_path, hub_with(tmp_path, 1000))))
    assert ruleset.count_rules(small) == ruleset.count_rules(big)
    elems = [c["add"]["element"] for c in big["nftables"] if "add" in c and "element" in c["add"]]
    spokes = next(e for e in elems if e["name"] == "spokes")
    assert len(spokes["elem"]) == 1000


def test_hub_policy(tmp_path: Path) -> None:
    b = ruleset.render_ruleset(load_config(write(tmp_path, HUB)))
    chains = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in b["nftables"] if "add" in c and "chain" in c["add"]}
    assert {n: (c["hook"], c["policy"]) for n, c in chains.items()} == {
        "input": ("input", "accept"), "forward": ("forward", "accept"), "output": ("output", "accept")}
    inp = json.dumps(rules(b, "input"))
    assert '"right": 51820' in inp and '"@public_tcp"' in inp
    assert rules(b, "input")[-1] == [ruleset.COUNTER, ruleset.DROP]
    fwd = rules(b, "forward")
    assert json.dumps(fwd[0]).count("@spokes") == 2 and fwd[0][-1] == ruleset.ACCEPT
    assert all(r[-1] == ruleset.DROP for r in fwd[1:])
    out = rules(b, "output")
    assert out[0] == [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wg0"}},
                      ruleset.COUNTER, ruleset.DROP]
    assert out[1:] == [FAIL_CLOSED("10.88.0.0", 24, "wg0")]


def FAIL_CLOSED(addr: str, plen: int, ifname: str) -> list[Any]:
    return [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"prefix": {"addr": addr, "len": plen}}}},
            {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": {"set": [ifname, "lo"]}}},
            ruleset.COUNTER, ruleset.DROP]


def test_spoke_drops_the_hub_before_anything_is_accepted(tmp_path: Path) -> None:
    b = ruleset.render_ruleset(load_config(write(tmp_path, SPOKE)))
    inp = rules(b, "input")
    assert inp[0][-1] == ruleset.ACCEPT and "lo" in json.dumps(inp[0])
    assert '"right": "10.88.0.1"' in json.dumps(inp[1]) and inp[1][-1] == ruleset.DROP
    assert any('"right": 8000' in json.dumps(r) for r in inp)
    # the overlay's prefix leaves by wg0 or not at all (wireguard-go killed: no clear text on eth0)
    assert rules(b, "output") == [FAIL_CLOSED("10.88.0.0", 24, "wg0")]
    assert all(r[-1] == ruleset.DROP for r in rules(b, "forward"))


def test_narrowed_overlay_ports_and_trusted_interfaces_are_sets(tmp_path: Path) -> None:
    text = SPOKE + "firewall:\n  overlay_tcp_ports: [5432]\n  trusted_interfaces: [docker0, 'br-*']\n"
    b = ruleset.render_ruleset(load_config(write(tmp_path, text)))
    elems = {c["add"]["element"]["name"]: c["add"]["element"]["elem"]
             for c in b["nftables"] if "add" in c and "element" in c["add"]}
    assert elems["overlay_tcp"] == [5432] and elems["trusted_ifs"] == ["docker0", "br-*"]


def test_a_rejected_batch_keeps_the_previous_table_and_is_reported(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write(tmp_path, SPOKE))
    applied: list[Any] = []
    live = {"nftables": [{"table": {"family": "inet", "name": "dvpn", "handle": 1}}]}

    def accept(batch: Any) -> None:
        applied.append(batch)

    monkeypatch.setattr(nft, "read_table", lambda: live)
    monkeypatch.setattr(nft, "apply_batch", accept)
    state = nft.FirewallState()
    assert nft.reconcile_firewall(config, state) is True
    assert state.applies == 1 and state.error is None
    # Nothing changed: nothing is written.
    assert nft.reconcile_firewall(config, state) is False and len(applied) == 1

    def reject(batch: Any) -> None:
        raise nft.FirewallError("Error: Could not process rule: No such file or directory", batch)

    monkeypatch.setattr(nft, "apply_batch", reject)
    config2 = load_config(write(tmp_path, SPOKE + "firewall:\n  public_tcp_ports: [443]\n"))
    assert nft.reconcile_firewall(config2, state) is False
    assert state.error is not None and "Could not process rule" in state.error
    assert state.applies == 1 and state.applied  # the previous table is still the one in force
