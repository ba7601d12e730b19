"""Config validation: every rejection names the file, the line, the key path and the problem."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from dvpnd.config.load import load_config
from dvpnd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
K1 = "5eYOuqiQKxFxkSDRqTEf+6BJqKNMcFuk0klz4xbmNRs="
K2 = "0QfTvJPCNrSkD/9SjOQnXeYHrzM0+vkNwMc2MOAIgVM="
K3 = "Pz2bp3hT4R0pt40UA0jT0rfnpbqLkDHIkVLazU5vAW4="

HUB = f"""\
role: hub
name: hub
peers:
  - name: spoke-a
    public_key: {K1}
    address: 10.88.0.11
"""
SPOKE = f"""\
role: spoke
name: spoke-a
overlay:
  address: 10.88.0.11
hub:
  public_key: {K3}
  endpoint: 192.0.2.10:51820
"""


def write(tmp_path: Path, text: str, name: str = "dvpnd.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    return e.value.problems


def test_hub_defaults_come_from_the_seed(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, HUB))
    assert c.role == "hub"
    assert c.network == IPv4Network("10.88.0.0/24")
    assert c.address == c.hub_address == IPv4Address("10.88.0.1")
    assert c.wireguard.listen_port == 51820 and c.wireguard.interface == "wg0"
    assert c.firewall.public_tcp_ports == (22,)
    assert [p.name for p in c.peers] == ["spoke-a"]


def test_spoke_defaults_keepalive_and_no_fixed_port(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, SPOKE))
    assert c.wireguard.persistent_keepalive == 25
    assert c.wireguard.listen_port is None
    assert c.hub is not None and str(c.hub.endpoint) == "192.0.2.10:51820"
    assert c.status.address == "0.0.0.0" and c.status.port == 8000


def test_larger_overlay_for_many_spokes(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, HUB.replace("name: hub\n", "name: hub\noverlay:\n  network: 10.88.0.0/16\n")
                          .replace("10.88.0.11", "10.88.7.200")))
    assert c.network.prefixlen == 16 and str(c.peers[0].address) == "10.88.7.200"


def test_loading_a_config_leaves_nothing_for_the_cyclic_collector(tmp_path: Path) -> None:
    """The YAML nodes and marks go when the load returns, by reference counting: nothing is left
    in cycles (a hub with 5,000 peers left 90,000 objects, whose full collection held dvpnd for
    200 ms). A config with a mistake leaves nothing either."""
    import gc

    good = write(tmp_path, HUB + "".join(f"  - name: s{i}\n    public_key: {k}\n    address: 10.88.0.{12 + i}\n"
                                         for i, k in enumerate((K2,))))
    bad = write(tmp_path, HUB + "  - name: BAD\n", "bad.yaml")
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        load_config(good)
        with pytest.raises(ConfigError):
            load_config(bad)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == [], left[:20]


def test_example_configs_are_valid() -> None:
    for name in ("hub.yaml", "spoke.yaml"):
        load_config(ROOT / "etc" / name)


@pytest.mark.parametrize(
    "text, expected",
    [
        (HUB + "colour: blue\n", ":7: colour: unknown key"),
        (HUB.replace("name: hub", "name: hub\nwireguard:\n  interfce: wg0"), ":4: wireguard.interfce: unknown key (did you mean 'interface'?)"),
        (HUB.replace("name: hub", "name: hub\nwireguard:\n  listen_port: '51820'"), "wireguard.listen_port: must be an integer, got a string"),
        (HUB.replace("name: hub", "name: hub\nwireguard:\n  mtu: true"), "wireguard.mtu: must be an integer, got a boolean"),
        (HUB.replace(K1, "not-a-key"), "peers[0].public_key: public key is not a WireGuard key"),
        (HUB.replace(K1, K1[:-2] + "!="), "peers[0].public_key: public key is not valid base64"),
        (HUB.replace("10.88.0.11", "10.99.0.11"), "peers[0].address: 10.99.0.11 is outside the overlay 10.88.0.0/24"),
        (HUB.replace("10.88.0.11", "10.88.0.255"), "network or broadcast address"),
        (HUB.replace("10.88.0.11", "10.88.0.1"), "peers[0].address: 10.88.0.1 is the hub's address"),
        (HUB + f"  - name: spoke-b\n    public_key: {K1}\n    address: 10.88.0.12\n",
         "peers[1].public_key: duplicate public key (also at"),
        (HUB + f"  - name: spoke-b\n    public_key: {K2}\n    address: 10.88.0.11\n",
         "peers[1].address: duplicate address 10.88.0.11"),
        (HUB + f"  - name: spoke-a\n    public_key: {K2}\n    address: 10.88.0.12\n",
         "peers[1].name: duplicate peer name 'spoke-a'"),
        (HUB.replace("name: hub", "name: hub\nwireguard:\n  listen_port: 70000"), "wireguard.listen_port: port 70000 is out of range (1-65535)"),
        (HUB.replace("name: hub", "name: hub\nwireguard:\n  listen_port: 0"), "port 0 is out of range"),
        (HUB.replace("name: hub", "name: hub\nstatus:\n  port: 65536"), "status.port: port 65536 is out of range"),
        (HUB.replace("role: hub", "role: server"), "role: must be 'hub' or 'spoke'"),
        (HUB.replace("name: hub", "name: hub\noverlay:\n  network: 10.88.0.1/24"), "overlay.network: '10.88.0.1/24' is not an IPv4 network"),
        (SPOKE.replace("  endpoint: 192.0.2.10:51820\n", ""), "hub.endpoint: is required"),
        (SPOKE.replace("192.0.2.10:51820", "192.0.2.10"), "hub.endpoint: '192.0.2.10' must be host:port"),
        (SPOKE.replace("192.0.2.10:51820", "192.0.2.10:99999"), "hub.endpoint: '192.0.2.10:99999' port 99999 is out of range"),
        (SPOKE.replace("10.88.0.11", "10.88.0.1"), "overlay.address: 10.88.0.1 is the hub's address; a spoke needs its own"),
        (SPOKE.replace("  address: 10.88.0.11\n", "  address: 10.88.1.11\n"), "overlay.address: 10.88.1.11 is outside the overlay"),
        (SPOKE.replace("hub:\n", "hubb:\n"), "hubb: unknown key"),
        (SPOKE + "firewall:\n  public_udp_ports: [51820]\nwireguard:\n  listen_port: 51820\n",
         "firewall.public_udp_ports: UDP 51820 is the WireGuard port"),
        (SPOKE + "firewall:\n  trusted_interfaces: [docker0, 'this-name-is-far-too-long']\n",
         "firewall.trusted_interfaces[1]: 'this-name-is-far-too-long' is not an interface name"),
        (SPOKE + "firewall:\n  trusted_interfaces: [wg0]\n", "firewall.trusted_interfaces[0]: 'wg0' cannot be trusted"),
        (SPOKE + "firewall:\n  overlay_tcp_ports: some\n", "firewall.overlay_tcp_ports: must be 'all' or a list of ports"),
        (SPOKE + "peers: []\n", "peers: only the hub lists peers"),
        (HUB + "role: spoke\n", "role: duplicate key (first at line 1)"),
        ("role: hub\npeers:\n  - name: [unclosed\n", "YAML syntax error"),
    ],
)
def test_rejections_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(expected in p for p in found), found
    assert all(p.startswith(str(tmp_path / "dvpnd.yaml")) for p in found), found


def test_yaml_syntax_error_has_the_line_number(tmp_path: Path) -> None:
    found = problems(tmp_path, "role: hub\nname: hub\npeers:\n  - name: a\n   bad: indentation\n")
    assert len(found) == 1 and f"{tmp_path / 'dvpnd.yaml'}:5: YAML syntax error" in found[0], found


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = HUB.replace("10.88.0.11", "10.99.0.11").replace(K1, "bad") + "extra: 1\n"
    found = problems(tmp_path, text)
    assert len(found) == 3, found


def test_peers_d_files_add_spokes_and_are_checked_too(tmp_path: Path) -> None:
    (tmp_path / "peers.d").mkdir()
    (tmp_path / "peers.d" / "spoke-b.yaml").write_text(f"public_key: {K2}\naddress: 10.88.0.12\n")
    c = load_config(write(tmp_path, HUB))
    assert [(p.name, str(p.address)) for p in c.peers] == [("spoke-a", "10.88.0.11"), ("spoke-b", "10.88.0.12")]

    (tmp_path / "peers.d" / "spoke-c.yaml").write_text(f"public_key: {K2}\naddress: 10.88.0.11\nport: 1\n")
    found = problems(tmp_path, HUB)
    joined = "\n".join(found)
    assert f"{tmp_path / 'peers.d' / 'spoke-c.yaml'}:3: port: unknown key" in joined
    assert "spoke-c.yaml:1: public_key: duplicate public key (also at" in joined
    assert "spoke-c.yaml:2: address: duplicate address 10.88.0.11" in joined


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.yaml")
    assert e.value.problems == [f"{tmp_path / 'nope.yaml'}: file not found"]


def _dvpnctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvpnd.cli", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.process
def test_dvpnctl_check_exits_2_with_problems_and_no_traceback(tmp_path: Path) -> None:
    bad = write(tmp_path, HUB.replace("10.88.0.11", "10.99.0.11") + "colour: blue\n")
    r = _dvpnctl("check", "--config", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith(f"{bad}:") for ln in lines), r.stderr


@pytest.mark.process
def test_dvpnctl_check_exits_0_on_a_good_config(tmp_path: Path) -> None:
    r = _dvpnctl("check", "--config", str(write(tmp_path, SPOKE)))
    assert r.returncode == 0 and ": ok" in r.stdout, r.stderr


@pytest.mark.process
def test_dvpnd_exits_with_the_config_code_on_a_bad_config(tmp_path: Path) -> None:
    bad = write(tmp_path, "role: hub\nwireguard: 3\n")
    r = subprocess.run([sys.executable, "-m", "dvpnd.daemon", "--config", str(bad)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 78
    assert "wireguard: must be a mapping, got an integer" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("text, message", [
    (HUB.replace("name: hub", "name: \"hub\\n\""), "name: must be 1-63 characters"),
    ("role: hub\nname: hub\noverlay:\n  network: 0.0.0.0/0\n", "overlay.network: 0.0.0.0/0 is not a private range"),
    ("role: hub\nname: hub\noverlay:\n  network: 127.0.0.0/8\n", "overlay.network: 127.0.0.0/8 is not a private range"),
    ("role: hub\nname: hub\noverlay:\n  network: 224.0.0.0/4\n", "overlay.network: 224.0.0.0/4 is not a private range"),
    ("role: hub\nname: hub\noverlay:\n  network: 169.254.0.0/16\n", "not a private range"),
    (HUB + "state_dir: var/lib/dvpn\n", "state_dir: 'var/lib/dvpn' must be an absolute path"),
    (HUB + "wireguard:\n  private_key_file: key\n", "wireguard.private_key_file: 'key' must be an absolute path"),
    (HUB + "control:\n  socket: ctl.sock\n", "control.socket: 'ctl.sock' must be an absolute path"),
    (HUB.replace(K1, "A" * 43 + "="), "public_key: is the all-zero key"),
    (SPOKE.replace(K3, "A" * 43 + "="), "hub.public_key: is the all-zero key"),
])
def test_what_validation_let_through_is_refused(tmp_path: Path, text: str, message: str) -> None:
    assert any(message in p for p in problems(tmp_path, text)), problems(tmp_path, text)


def test_the_overlay_may_be_any_private_range(tmp_path: Path) -> None:
    for net, hub in (("172.20.0.0/16", "172.20.0.1"), ("100.64.7.0/24", "100.64.7.1"), ("192.168.50.0/24", "192.168.50.1")):
        c = load_config(write(tmp_path, f"role: hub\nname: hub\noverlay:\n  network: {net}\n"))
        assert str(c.hub_address) == hub


def test_a_peers_d_file_whose_name_is_no_spoke_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "peers.d").mkdir()
    (tmp_path / "peers.d" / "evil\n.yaml").write_text(f"public_key: {K2}\naddress: 10.88.0.12\n")
    (tmp_path / "peers.d" / "-x.yaml").write_text(f"public_key: {K2}\naddress: 10.88.0.13\n")
    got = problems(tmp_path, HUB)
    assert sum("the file's name" in p and "(NAME.yaml names the spoke)" in p for p in got) == 2, got


@pytest.mark.process
def test_spoke_add_refuses_a_name_with_a_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "peers.d").mkdir()
    cfg = write(tmp_path, HUB)
    r = _dvpnctl("spoke", "add", "evil\n", "--pubkey", K2, "--config", str(cfg))
    assert r.returncode != 0 and "must be 1-63 characters" in r.stderr, r.stdout + r.stderr
    assert sorted(p.name for p in (tmp_path / "peers.d").iterdir()) == []
