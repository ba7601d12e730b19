"""dvpnd's own netlink against the real kernel, in a namespace of the test's own: links, MTU, up,
addresses, deletion, and the errors a user sees (what `ip` shows is the oracle)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace)")

PROBE = textwrap.dedent("""
    import json, subprocess, sys
    from dvpnd import netif
    from dvpnd.errors import BackendError
    from dvpnd.linkstate import LinkChanges
    from dvpnd.wireguard.kernel import KernelBackend
    from dvpnd.wireguard.links import delete_link, link_kind

    def ip(*a):
        return json.loads(subprocess.run(["ip", "-j", *a], check=True, capture_output=True, text=True).stdout)

    def err(f):
        try:
            f()
        except BackendError as e:
            return str(e)
        return None

    out = {"absent": [link_kind("t0"), netif.read_link("t0"), delete_link("t0")]}
    subprocess.run(["ip", "tuntap", "add", "t0", "mode", "tun"], check=True)
    out["kind"] = link_kind("t0")
    netif.apply_link("t0", LinkChanges(mtu=1340, add=frozenset({"10.88.0.11/24", "10.99.0.1/32"}),
                                       remove=frozenset(), up=True))
    st = netif.read_link("t0")
    out["after_apply"] = [st.up, st.mtu, sorted(st.addresses)]
    (link,) = ip("link", "show", "t0")
    (addr,) = ip("-4", "addr", "show", "t0")
    out["ip_says"] = ["UP" in link["flags"], link["mtu"],
                      sorted(f"{a['local']}/{a['prefixlen']}" for a in addr["addr_info"])]
    netif.apply_link("t0", LinkChanges(mtu=None, add=frozenset(), remove=frozenset({"10.99.0.1/32"}), up=False))
    out["after_remove"] = sorted(netif.read_link("t0").addresses)
    out["twice"] = err(lambda: netif.apply_link("t0", LinkChanges(
        mtu=None, add=frozenset({"10.88.0.11/24"}), remove=frozenset(), up=False)))
    out["lo"] = sorted(netif.read_link("lo").addresses)
    out["deleted"] = [delete_link("t0"), link_kind("t0")]
    out["no_device"] = err(lambda: netif.apply_link("t0", LinkChanges(mtu=1400, add=frozenset(),
                                                                       remove=frozenset(), up=True)))
    out["wg_family"] = err(lambda: KernelBackend("wg9").read())
    print(json.dumps(out))
""")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"dvpnt-nl-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_links_and_addresses_over_dvpnds_own_netlink_match_what_ip_shows(netns: str) -> None:
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", PROBE], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["absent"] == [None, None, False]
    assert out["kind"] == "tun"
    assert out["after_apply"] == [True, 1340, ["10.88.0.11/24", "10.99.0.1/32"]]
    assert out["ip_says"] == out["after_apply"]
    assert out["after_remove"] == ["10.88.0.11/24"]
    assert out["twice"] == "cannot configure t0: File exists"
    assert out["lo"] == ["127.0.0.1/8"]
    assert out["deleted"] == [True, None]
    assert out["no_device"] == "interface t0 does not exist"
    if not os.path.exists("/sys/module/wireguard"):
        assert out["wg_family"] == "WireGuard generic netlink family unavailable: No such file or directory"
