"""The lab's address plan (pure): every spoke a name and a public link of its own, up to the
bench's hundred spokes, and nothing overlapping the hub's, the second hub's or the outside's."""

from __future__ import annotations

from ipaddress import ip_interface
from pathlib import Path

import pytest

from dvpnd.errors import DvpnError
from dvpnd.lab import cluster


def test_the_plan_gives_every_one_of_its_spokes_its_own_name_address_and_link() -> None:
    nodes = cluster.plan(cluster.MAX_SPOKES, "userspace", hubs=2)
    spokes = [n for n in nodes if n.role == "spoke"]
    assert len(spokes) == cluster.MAX_SPOKES >= 100
    assert len({n.name for n in nodes}) == len(nodes) and len({n.overlay_ip for n in spokes}) == len(spokes)
    assert all(len(f"r-{n.name}") <= 15 for n in nodes)  # (the router's end of each link)
    links = cluster._links(nodes)
    nets = [ip_interface(node_side).network for _, _, node_side in links]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    for _, router_side, node_side in links:  # the two ends of each link share it
        assert ip_interface(router_side).network == ip_interface(node_side).network
        assert ip_interface(router_side).ip != ip_interface(node_side).ip
    assert [n.public_ip for n in spokes[:3]] == ["198.51.100.18", "198.51.100.34", "198.51.100.50"]
    assert spokes[26].name == "spoke-27"
    assert all(any(n.public_ip.startswith(p) for p in ("192.0.2.", "198.51.100.", "203.0.113.")) for n in nodes[1:])


def test_a_lab_past_the_machines_inotify_instances_is_refused_before_anything_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    monkeypatch.setattr(cluster, "INOTIFY_LIMIT", limit)
    cluster.check_inotify(60, 1, True, "userspace")  # 121 wireguard-go
    cluster.check_inotify(120, 1, False, "userspace")
    with pytest.raises(DvpnError, match=r"confidential lab of 64 spokes runs 129 wireguard-go.*at most 61 spokes"):
        cluster.check_inotify(64, 1, True, "userspace")
    cluster.check_inotify(100, 1, True, "kernel")  # (the kernel's devices hold none)
