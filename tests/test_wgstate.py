"""Desired state, the syncconf-style peer diff, UAPI encoding/parsing and netlink messages."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from dvpnd.config.load import load_config
from dvpnd.errors import BackendError
from dvpnd.wireguard import uapi
from dvpnd.wireguard.backends import select_backend
from dvpnd.wireguard.device import (
    DesiredDevice,
    DeviceState,
    PeerChange,
    PeerState,
    diff_device,
    render_device,
)
from dvpnd.wireguard.keys import (
    KeyFileError,
    decode_key,
    encode_key,
    generate_private_key,
    load_or_create_private_key,
    public_key,
)
from dvpnd.wireguard.netlink import (
    WGDEVICE_A_IFNAME,
    WGDEVICE_A_PEERS,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
    build_netlink_set,
    parse_netlink_device,
)
from tests.test_config import HUB, K1, K2, K3, SPOKE, write

PRIV = encode_key(bytes(range(32)))


def as_device(d: DesiredDevice, port: int = 51820) -> DeviceState:
    """What a device looks like after it took `d` exactly."""
    return DeviceState(
        private_key=d.private_key, listen_port=d.listen_port or port,
        peers={k: PeerState(public_key=k, allowed_ips=p.allowed_ips, endpoint=p.endpoint or "198.51.100.18:40000",
                            persistent_keepalive=p.persistent_keepalive)
               for k, p in d.peers.items()})


# --- keys ---------------------------------------------------------------------------------

@pytest.mark.process
@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools not installed")
def test_public_key_matches_wg_pubkey() -> None:
    for _ in range(5):
        priv = generate_private_key()
        out = subprocess.run(["wg", "pubkey"], input=encode_key(priv), capture_output=True, text=True, check=True)
        assert out.stdout.strip() == encode_key(public_key(priv))


def test_public_key_rfc7748_vector() -> None:
    """RFC 7748 section 6.1 (Alice's key pair), through the library's X25519."""
    a = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert public_key(a).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"


def test_keys_come_from_the_library_not_from_hand_written_arithmetic() -> None:
    import inspect

    from dvpnd.wireguard import keys

    src = inspect.getsource(keys)
    assert "X25519PrivateKey" in src and "2**255" not in src and "pow(" not in src


def test_key_file_is_created_0600_in_0700_dir_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "private.key"
    key, created = load_or_create_private_key(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, created2 = load_or_create_private_key(path)
    assert again == key and not created2
    assert [p.name for p in path.parent.iterdir()] == ["private.key"]  # no temp file left


def test_key_readable_by_others_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    key, _ = load_or_create_private_key(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError) as e:
        load_or_create_private_key(path)
    assert "accessible by group or others (mode 0640)" in str(e.value)
    assert encode_key(key) not in str(e.value)


def test_malformed_key_file_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    path.write_text("c2VjcmV0LXNlY3JldC1zZWNyZXQ=\n")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError) as e:
        load_or_create_private_key(path)
    assert "c2VjcmV0" not in str(e.value) and "is not a WireGuard key" in str(e.value)


# --- desired state and diff --------------------------------------------------------------

def test_hub_renders_one_peer_per_spoke_with_its_32(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, HUB + f"  - name: spoke-b\n    public_key: {K2}\n    address: 10.88.0.12\n"))
    d = render_device(c, PRIV, None)
    assert d.listen_port == 51820
    assert {k: (p.name, set(p.allowed_ips), p.endpoint, p.persistent_keepalive) for k, p in d.peers.items()} == {
        K1: ("spoke-a", {"10.88.0.11/32"}, None, 25),
        K2: ("spoke-b", {"10.88.0.12/32"}, None, 25),
    }


def test_spoke_routes_the_whole_overlay_to_the_hub_with_keepalive(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, SPOKE))
    d = render_device(c, PRIV, "192.0.2.10:51820")
    assert d.listen_port is None
    (peer,) = d.peers.values()
    assert (peer.public_key, set(peer.allowed_ips), peer.endpoint, peer.persistent_keepalive) == (
        K3, {"10.88.0.0/24"}, "192.0.2.10:51820", 25)


def test_fresh_device_gets_key_port_and_all_peers(tmp_path: Path) -> None:
    d = render_device(load_config(write(tmp_path, HUB)), PRIV, None)
    ch = diff_device(d, DeviceState())
    assert ch.private_key == PRIV and ch.listen_port == 51820
    assert ch.peers == (PeerChange(public_key=K1, create=True, endpoint=None, persistent_keepalive=25,
                                   allowed_ips=frozenset({"10.88.0.11/32"})),)


def test_remembered_endpoints_seed_a_fresh_hub_device_and_never_override_roaming(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, HUB))
    d = render_device(c, PRIV, None, endpoint_hints={K1: "198.51.100.18:40000"})
    (fresh,) = diff_device(d, DeviceState()).peers
    assert fresh.create and fresh.endpoint == "198.51.100.18:40000"
    # A peer already on the device without an endpoint gets the hint ...
    bare = DeviceState(private_key=PRIV, listen_port=51820, peers={K1: PeerState(
        public_key=K1, allowed_ips=frozenset({"10.88.0.11/32"}), persistent_keepalive=25)})
    assert diff_device(d, bare).peers == (PeerChange(public_key=K1, endpoint="198.51.100.18:40000"),)
    # ... but a spoke that roamed elsewhere keeps the endpoint the device learned.
    roamed = DeviceState(private_key=PRIV, listen_port=51820, peers={K1: replace(
        bare.peers[K1], endpoint="203.0.113.9:5555")})
    assert not diff_device(d, roamed)


def test_endpoint_memory_survives_a_restart_and_forgets_removed_peers(tmp_path: Path) -> None:
    from dvpnd.daemon.reconcile import EndpointMemory

    path = tmp_path / "endpoints.json"
    m = EndpointMemory(path)
    seen: dict[str, str | None] = {K1: "198.51.100.18:1", K2: None}
    assert m.remember(seen) and not m.remember(seen)  # written once, then nothing to write
    assert EndpointMemory(path).load() == {K1: "198.51.100.18:1"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    m.remember({K2: "198.51.100.34:2"})
    assert EndpointMemory(path).load() == {K2: "198.51.100.34:2"}


def test_second_diff_after_apply_is_empty(tmp_path: Path) -> None:
    d = render_device(load_config(write(tmp_path, HUB)), PRIV, None)
    assert not diff_device(d, as_device(d))


def test_roaming_spoke_endpoint_and_counters_are_not_a_change(tmp_path: Path) -> None:
    d = render_device(load_config(write(tmp_path, HUB)), PRIV, None)
    dev = as_device(d)
    dev.peers[K1] = replace(dev.peers[K1], endpoint="203.0.113.77:1234", last_handshake=1e9, rx_bytes=5)
    assert not diff_device(d, dev)


def test_only_the_changed_peer_is_touched_and_unknown_peers_removed(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, HUB + f"  - name: spoke-b\n    public_key: {K2}\n    address: 10.88.0.12\n"))
    d = render_device(c, PRIV, None)
    dev = as_device(d)
    dev.peers[K2] = replace(dev.peers[K2], allowed_ips=frozenset({"10.88.0.99/32"}))
    dev.peers[K3] = PeerState(public_key=K3, allowed_ips=frozenset({"10.88.0.13/32"}))
    ch = diff_device(d, dev)
    assert ch.private_key is None and ch.listen_port is None
    assert ch.peers == (
        PeerChange(public_key=K3, remove=True),
        PeerChange(public_key=K2, allowed_ips=frozenset({"10.88.0.12/32"})),
    )


def test_spoke_endpoint_change_updates_only_the_endpoint(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, SPOKE))
    d = render_device(c, PRIV, "192.0.2.10:51820")
    dev = as_device(d)
    dev.peers[K3] = replace(dev.peers[K3], endpoint="192.0.2.99:51820")
    assert diff_device(d, dev).peers == (PeerChange(public_key=K3, endpoint="192.0.2.10:51820"),)


def test_changes_repr_never_shows_the_private_key(tmp_path: Path) -> None:
    d = render_device(load_config(write(tmp_path, HUB)), PRIV, None)
    ch = diff_device(d, DeviceState())
    assert PRIV not in repr(ch) and PRIV not in repr(d)


# --- UAPI --------------------------------------------------------------------------------

def test_uapi_set_encoding_follows_syncconf() -> None:
    from dvpnd.wireguard.device import DeviceChanges

    ch = DeviceChanges(private_key=PRIV, listen_port=51820, peers=(
        PeerChange(public_key=K3, remove=True),
        PeerChange(public_key=K1, create=True, endpoint="192.0.2.10:51820", persistent_keepalive=25,
                   allowed_ips=frozenset({"10.88.0.0/24"})),
        PeerChange(public_key=K2, allowed_ips=frozenset({"10.88.0.12/32"})),
    ))
    h = uapi.b64_to_hex
    assert uapi.encode_set(ch) == (
        f"set=1\nprivate_key={h(PRIV)}\nlisten_port=51820\n"
        f"public_key={h(K3)}\nremove=true\n"
        f"public_key={h(K1)}\nendpoint=192.0.2.10:51820\npersistent_keepalive_interval=25\n"
        f"replace_allowed_ips=true\nallowed_ip=10.88.0.0/24\n"
        f"public_key={h(K2)}\nupdate_only=true\nreplace_allowed_ips=true\nallowed_ip=10.88.0.12/32\n\n"
    )


def test_uapi_get_parsing() -> None:
    h = uapi.b64_to_hex
    text = (f"private_key={h(PRIV)}\nlisten_port=51820\n"
            f"public_key={h(K1)}\npreshared_key={'0' * 64}\nprotocol_version=1\nendpoint=198.51.100.18:39000\n"
            "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\n"
            "tx_bytes=100\nrx_bytes=200\npersistent_keepalive_interval=0\n"
            "allowed_ip=10.88.0.11/32\n"
            f"public_key={h(K2)}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
            "allowed_ip=10.88.0.12/32\nallowed_ip=10.88.0.112/32\n"
            "errno=0\n\n")
    dev = uapi.parse_get(text)
    assert dev.private_key == PRIV and dev.listen_port == 51820
    assert dev.public_key == encode_key(public_key(decode_key(PRIV)))
    assert dev.peers[K1] == PeerState(public_key=K1, allowed_ips=frozenset({"10.88.0.11/32"}),
                                      endpoint="198.51.100.18:39000", persistent_keepalive=0,
                                      last_handshake=1700000000.5, rx_bytes=200, tx_bytes=100)
    assert dev.peers[K2].last_handshake is None
    assert dev.peers[K2].allowed_ips == frozenset({"10.88.0.12/32", "10.88.0.112/32"})


def test_a_uapi_read_back_parses_only_the_peers_asked_for() -> None:
    from dvpnd.errors import BackendError
    from dvpnd.testing.fakes import render_get

    full = uapi.parse_get(render_get(DeviceState(private_key=PRIV, listen_port=51820, peers={
        k: PeerState(public_key=k, allowed_ips=frozenset({f"10.88.0.{11 + i}/32"}), endpoint=f"198.51.100.{i + 1}:4000",
                     persistent_keepalive=25, last_handshake=1700000000.0 + i, rx_bytes=i, tx_bytes=2 * i)
        for i, k in enumerate((K1, K2, K3))})))
    text = render_get(full)
    for only in ({K2}, {K3}, {K1, K3}, set()):
        part = uapi.parse_get(text, frozenset(only))
        assert part.peers == {k: full.peers[k] for k in only}
        assert (part.private_key, part.public_key, part.listen_port) == (full.private_key, full.public_key, 51820)
    with pytest.raises(BackendError):
        uapi.parse_get(text.replace("errno=0", "errno=5"), frozenset({K3}))


def test_uapi_errno_is_an_error() -> None:
    from dvpnd.errors import BackendError

    with pytest.raises(BackendError):
        uapi.parse_get("errno=1\n\n")
    assert uapi.parse_errno("errno=22\n\n") == 22


# --- netlink (kernel backend) --------------------------------------------------------------

def _peers_of(payload: bytes) -> list[dict[int, bytes]]:
    from dvpnd.netlink import codec

    dev = codec.attr_map(payload, 4)
    return [codec.attr_map(raw) for _t, raw in codec.attrs(dev[WGDEVICE_A_PEERS])]


def test_netlink_flags_use_the_kernel_values_not_pyroute2_072s() -> None:
    from dvpnd.netlink import codec
    from dvpnd.wireguard.device import DeviceChanges
    from dvpnd.wireguard.netlink import WGPEER_A_ALLOWEDIPS, WGPEER_A_FLAGS

    assert (WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS, WGPEER_F_UPDATE_ONLY) == (1, 2, 4)
    ch = DeviceChanges(peers=(
        PeerChange(public_key=K3, remove=True),
        PeerChange(public_key=K1, create=True, endpoint="192.0.2.10:51820", persistent_keepalive=25,
                   allowed_ips=frozenset({"10.88.0.0/24"})),
        PeerChange(public_key=K2, endpoint="192.0.2.10:51821"),
    ))
    (msg,) = build_netlink_set("wg0", ch)
    peers = _peers_of(msg)
    assert [codec.get_u32(p[WGPEER_A_FLAGS]) for p in peers] == [
        WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS, WGPEER_F_UPDATE_ONLY]
    (allowed,) = [codec.attr_map(raw) for _t, raw in codec.attrs(peers[1][WGPEER_A_ALLOWEDIPS])]
    assert allowed == {1: bytes([2, 0]), 2: bytes([10, 88, 0, 0]), 3: bytes([24])}


def test_netlink_set_messages_split_big_devices_and_decode_with_pyroute2() -> None:
    """The bytes the kernel would read, decoded by another codec (pyroute2's, where installed)."""
    from dvpnd.wireguard.device import DeviceChanges

    keys = [encode_key(bytes([i % 256, i // 256]) + bytes(30)) for i in range(150)]
    ch = DeviceChanges(private_key=PRIV, listen_port=51820, peers=tuple(
        PeerChange(public_key=k, create=True, persistent_keepalive=0, endpoint=f"[2001:db8::{i + 1:x}]:5182{i % 10}"
                   if i % 2 else f"198.51.100.{i % 250 + 1}:{40000 + i}",
                   allowed_ips=frozenset({f"10.88.{i // 250}.{i % 250 + 2}/32"})) for i, k in enumerate(keys)))
    msgs = build_netlink_set("wg0", ch)
    assert [len(_peers_of(m)) for m in msgs] == [64, 64, 22]
    wireguard = pytest.importorskip("pyroute2.netlink.generic.wireguard")
    seen = []
    for i, payload in enumerate(msgs):
        from dvpnd.netlink import codec

        back = wireguard.wgmsg(codec.message(30, 1, 1, payload))
        back.decode()
        assert back["cmd"] == 1 and back.get_attr("WGDEVICE_A_IFNAME") == "wg0"
        # The private key and port go once, in the first message.
        assert (back.get_attr("WGDEVICE_A_PRIVATE_KEY") is not None) == (i == 0)
        assert (back.get_attr("WGDEVICE_A_LISTEN_PORT") == 51820) == (i == 0)
        for peer in back.get_attr("WGDEVICE_A_PEERS"):
            key = peer.get_attr("WGPEER_A_PUBLIC_KEY")
            key = key.get("value") if isinstance(key, dict) else key
            seen.append((key.decode() if isinstance(key, bytes) else key, peer.get_attr("WGPEER_A_ENDPOINT")["port"],
                         peer.get_attr("WGPEER_A_ALLOWEDIPS")[0]["addr"]))
    assert [s[0] for s in seen] == keys
    assert seen[3][1:] == (51823, "10.88.0.5/32") and seen[4][1:] == (40004, "10.88.0.6/32")


def _get_reply(peers: list[bytes], dev_extra: bytes = b"") -> bytes:
    from dvpnd.netlink import codec
    from dvpnd.wireguard.netlink import WG_CMD_GET_DEVICE, genl_header

    return (genl_header(WG_CMD_GET_DEVICE) + codec.string(WGDEVICE_A_IFNAME, "wg0") + dev_extra
            + codec.nested(WGDEVICE_A_PEERS, *peers))


def test_netlink_get_replies_parse_and_a_peer_continued_over_two_messages_is_one() -> None:
    import base64
    import struct

    from dvpnd.netlink import codec
    from dvpnd.wireguard import netlink as n

    def peer(key: str, *extra: bytes, ips: tuple[tuple[bytes, int], ...] = ()) -> bytes:
        aips = [codec.nested(0, codec.u16(1, 2 if len(a) == 4 else 10), codec.attr(2, a), codec.u8(3, m))
                for a, m in ips]
        return codec.nested(0, codec.attr(n.WGPEER_A_PUBLIC_KEY, base64.b64decode(key)), *extra,
                            codec.nested(n.WGPEER_A_ALLOWEDIPS, *aips))

    sin = struct.pack("=H", 2) + struct.pack("!H4s", 39000, bytes([198, 51, 100, 18])) + bytes(8)
    sin6 = struct.pack("=H", 10) + struct.pack("!HI16sI", 51820, 0, bytes.fromhex("20010db8" + "0" * 23 + "1"), 0)
    first = _get_reply([
        peer(K1, codec.attr(n.WGPEER_A_ENDPOINT, sin), codec.u16(n.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, 25),
             codec.attr(n.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", 1700000000, 500000000)),
             codec.attr(n.WGPEER_A_RX_BYTES, struct.pack("=Q", 200)), codec.attr(n.WGPEER_A_TX_BYTES, struct.pack("=Q", 100)),
             ips=((bytes([10, 88, 0, 11]), 32),)),
        peer(K2, codec.attr(n.WGPEER_A_ENDPOINT, sin6), ips=((bytes([10, 88, 0, 12]), 32),)),
    ], codec.attr(n.WGDEVICE_A_PRIVATE_KEY, base64.b64decode(PRIV)) + codec.u16(n.WGDEVICE_A_LISTEN_PORT, 51820))
    second = _get_reply([peer(K2, ips=((bytes([10, 88, 0, 112]), 32),))])
    dev = parse_netlink_device([first, second])
    assert dev.private_key == PRIV and dev.listen_port == 51820
    assert dev.peers[K1] == PeerState(public_key=K1, allowed_ips=frozenset({"10.88.0.11/32"}),
                                      endpoint="198.51.100.18:39000", persistent_keepalive=25,
                                      last_handshake=1700000000.5, rx_bytes=200, tx_bytes=100)
    assert dev.peers[K2].endpoint == "[2001:db8::1]:51820" and dev.peers[K2].last_handshake is None
    assert dev.peers[K2].allowed_ips == frozenset({"10.88.0.12/32", "10.88.0.112/32"})
    # a read-back of one peer: that peer (over both messages) and the device's fields, no other
    one = parse_netlink_device([first, second], only=frozenset({K2}))
    assert one.peers == {K2: dev.peers[K2]} and one.private_key == PRIV and one.listen_port == 51820
    assert parse_netlink_device([first, second], only=frozenset()).peers == {}


def test_the_netlink_config_digest_ignores_counters_and_sees_every_setting() -> None:
    from dataclasses import replace

    from dvpnd.testing.fakes import render_netlink_get
    from dvpnd.wireguard.netlink import config_digest

    base = DeviceState(private_key=PRIV, listen_port=51820, peers={
        k: PeerState(public_key=k, allowed_ips=frozenset({f"10.88.0.{11 + i}/32"}), endpoint=f"198.51.100.{i + 1}:4000",
                     persistent_keepalive=25) for i, k in enumerate((K1, K2, K3))})
    assert parse_netlink_device(render_netlink_get(base)).peers == base.peers

    def digest(state: DeviceState) -> bytes:
        return config_digest(render_netlink_get(state))

    def with_peer(**kw: object) -> DeviceState:
        return replace(base, peers={**base.peers, K2: replace(base.peers[K2], **kw)})

    same = digest(base)
    assert digest(with_peer(last_handshake=1700000000.25, rx_bytes=10**9, tx_bytes=7)) == same
    for other in (with_peer(allowed_ips=frozenset({"10.88.0.99/32"})), with_peer(endpoint="198.51.100.9:4000"),
                  with_peer(persistent_keepalive=0), replace(base, listen_port=51821),
                  replace(base, private_key=encode_key(bytes(range(1, 33)))),
                  replace(base, peers={k: p for k, p in base.peers.items() if k != K3})):
        assert digest(other) != same


def test_a_truncated_netlink_reply_is_a_clear_error_not_a_wrong_state() -> None:
    from dvpnd.netlink.codec import NetlinkFormatError

    reply = _get_reply([])
    with pytest.raises(NetlinkFormatError, match="length"):
        parse_netlink_device([reply[:4] + bytes([200, 0]) + reply[6:]])


def test_a_dns_hub_endpoint_is_resolved_again_only_when_the_hub_goes_quiet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from dvpnd.daemon.reconcile import EndpointResolver

    c = load_config(write(tmp_path, SPOKE.replace("192.0.2.10:51820", "hub.example.org:51820")))
    answers = iter(["192.0.2.10", "192.0.2.99"])
    calls: list[str] = []

    def fake(host: str, port: int, type: int = 0) -> list:  # type: ignore[type-arg]
        calls.append(host)
        return [(socket.AF_INET, type, 17, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    r = EndpointResolver()
    assert c.hub is not None
    assert r.endpoint(c.hub.endpoint, None, now=1000.0) == "192.0.2.10:51820"
    assert r.endpoint(c.hub.endpoint, 1000.0, now=1100.0) == "192.0.2.10:51820"  # handshakes fresh: no lookup
    assert len(calls) == 1
    assert r.endpoint(c.hub.endpoint, 1000.0, now=1200.0) == "192.0.2.99:51820"  # quiet for 200 s: look up again
    assert len(calls) == 2


# --- choosing the backend ------------------------------------------------------------------

def _auto_with(monkeypatch: pytest.MonkeyPatch, loaded: bool, kernel_has_it: bool) -> tuple[str, list[str]]:
    """select_backend('auto') with no existing device; the kernel's side is simulated.
    Returns the backend chosen and the links asked of the kernel."""
    from dvpnd.errors import BackendError
    from dvpnd.wireguard import backends, kernel

    state = {"loaded": loaded}
    asked: list[str] = []

    def create(self: kernel.KernelBackend) -> None:
        asked.append(self.ifname)
        if not kernel_has_it:
            raise BackendError("cannot create kernel WireGuard interface wg0: Operation not supported")
        state["loaded"] = True             # the kernel loaded its module to make the link

    monkeypatch.setattr(backends, "link_kind", lambda ifname: None)
    monkeypatch.setattr(backends, "kernel_module_available", lambda: state["loaded"])
    monkeypatch.setattr(kernel.KernelBackend, "create", create)
    return select_backend("auto", "wg0", Path("/nonexistent")).name, asked


def test_auto_lets_the_kernel_load_its_module_and_falls_back_to_wireguard_go(monkeypatch: pytest.MonkeyPatch) -> None:
    # not loaded yet, but the kernel has it: asking for the link loads it (no modprobe of our
    # own, which the unit's ProtectKernelModules= forbids)
    assert _auto_with(monkeypatch, loaded=False, kernel_has_it=True) == ("kernel", ["wg0"])
    # no WireGuard in this kernel (as on these machines): wireguard-go
    assert _auto_with(monkeypatch, loaded=False, kernel_has_it=False) == ("userspace", ["wg0"])
    # already loaded: the kernel, nothing asked
    assert _auto_with(monkeypatch, loaded=True, kernel_has_it=True) == ("kernel", [])


DATA = Path(__file__).resolve().parent / "data"


def test_parse_get_reads_a_captured_wireguard_go_reply_as_wg_show_reads_it() -> None:
    """tests/data/uapi-get-3-peers.txt: wireguard-go 0.0.20220316 (Debian 12) answering get=1 for a
    device set up with `wg set` (throwaway keys), beside `wg show dump` of the same device."""
    dev = uapi.parse_get((DATA / "uapi-get-3-peers.txt").read_text())
    first, *peers = (DATA / "uapi-get-3-peers.wg-dump").read_text().splitlines()
    private, _public, port, _fwmark = first.split("\t")
    assert dev.private_key == private and dev.listen_port == int(port) and len(dev.peers) == len(peers) == 3
    for line in peers:
        key, _psk, endpoint, allowed, handshake, rx, tx, keepalive = line.split("\t")
        p = dev.peers[key]
        assert p.allowed_ips == frozenset(allowed.split(","))
        assert p.endpoint == (None if endpoint == "(none)" else endpoint)
        assert p.persistent_keepalive == (0 if keepalive == "off" else int(keepalive))
        assert (p.last_handshake, p.rx_bytes, p.tx_bytes) == (None if handshake == "0" else float(handshake), int(rx), int(tx))


def test_the_uapi_fast_path_reads_each_peer_as_the_line_by_line_path_and_takes_wireguard_gos_own() -> None:
    """parse_get reads a peer written in wireguard-go's order with one regular expression; a peer
    written otherwise goes line by line. Both give the same PeerState, whatever the peer holds."""
    h = uapi.b64_to_hex
    captured = (DATA / "uapi-get-3-peers.txt").read_text()
    chunks = ("\n" + captured).split("\npublic_key=")[1:]
    chunks[-1] = chunks[-1].partition("\nerrno=")[0]
    assert len(chunks) == 3 and all(uapi._PEER.fullmatch(c) for c in chunks)  # wireguard-go's own: fast
    variants = [
        ("", "0", "0", "0", "0", "0", []),
        ("198.51.100.7:51820", "1700000000", "250", "10", "20", "25", ["10.88.0.11/32"]),
        ("[2001:db8::1]:51820", "0", "7", "0", "0", "0", ["10.88.0.0/24", "fd00::/64", "10.88.0.12/32"]),
        ("203.0.113.9:1", "1", "0", "1", "2", "65535", ["10.1.2.3/16", "fd00::1/128"]),  # not masked: normalized
    ]
    for endpoint, sec, nsec, tx, rx, keepalive, ips in variants:
        lines = [h(K1), "preshared_key=" + "0" * 64, "protocol_version=1"]
        lines += [f"endpoint={endpoint}"] if endpoint else []
        lines += [f"last_handshake_time_sec={sec}", f"last_handshake_time_nsec={nsec}", f"tx_bytes={tx}",
                  f"rx_bytes={rx}", f"persistent_keepalive_interval={keepalive}"]
        lines += [f"allowed_ip={ip}" for ip in ips]
        chunk = "\n".join(lines)
        assert uapi._PEER.fullmatch(chunk), chunk
        fast = uapi._peer(chunk)
        assert fast == uapi._peer_by_lines(chunk) == uapi._peer(chunk + "\n")
        assert fast.endpoint == (endpoint or None) and fast.rx_bytes == int(rx) and fast.tx_bytes == int(tx)
        # the same peer written another way (a field wireguard-go does not write, another order):
        # the line-by-line path, the same state
        other = "\n".join([lines[0], "some_future_field=1", *reversed(lines[1:])])
        assert uapi._PEER.fullmatch(other) is None and uapi._peer(other) == fast
    assert uapi.parse_get(f"private_key={h(PRIV)}\nerrno=0\n\n").peers == {}
    assert uapi.parse_get(f"public_key={h(K1)}\nerrno=0\n\n").peers[K1] == PeerState(public_key=K1)
    with pytest.raises(BackendError, match="malformed line"):
        uapi.parse_get(f"listen_port=1\npublic_key={h(K1)}\nlast_handshake_time_sec\nerrno=0\n\n")
    for bad in (f"public_key={h(K1)}\nrx_bytes=lots", "public_key=not-hex", f"public_key={h(K1)}\nallowed_ip=10.88.0.0/99"):
        with pytest.raises(BackendError, match="UAPI: malformed peer"):
            uapi.parse_get(bad + "\nerrno=0\n\n")


def test_the_config_digest_sees_configuration_not_traffic_nor_wireguard_gos_peer_order() -> None:
    from dvpnd.testing.fakes import render_get

    keys = [encode_key(generate_private_key()) for _ in range(4)]
    peers = {k: PeerState(public_key=k, allowed_ips=frozenset({f"10.88.0.{11 + i}/32"}), persistent_keepalive=25,
                          endpoint=f"198.51.100.{i + 1}:51820") for i, k in enumerate(keys)}
    dev = DeviceState(private_key=keys[0], listen_port=51820, peers=peers)
    digest = uapi.config_digest(render_get(dev))
    assert digest is not None
    shuffled = replace(dev, peers=dict(reversed(list(peers.items()))))
    busy = replace(dev, peers={k: replace(p, last_handshake=1700000000.25, rx_bytes=5, tx_bytes=7)
                               for k, p in peers.items()})
    assert uapi.config_digest(render_get(shuffled)) == uapi.config_digest(render_get(busy)) == digest
    k = keys[2]
    for drift in ({**peers, k: replace(peers[k], endpoint="203.0.113.9:4000")},
                  {**peers, k: replace(peers[k], allowed_ips=frozenset({"10.88.0.99/32"}))},
                  {**peers, k: replace(peers[k], persistent_keepalive=0)},
                  {p: v for p, v in peers.items() if p != k}):
        assert uapi.config_digest(render_get(replace(dev, peers=drift))) != digest
    assert uapi.config_digest(render_get(replace(dev, listen_port=51821))) != digest
    assert uapi.config_digest(render_get(dev).replace("errno=0", "errno=1")) is None
