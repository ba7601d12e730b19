"""The TCP fallback's relay on loopback, with real sockets (no root): a spoke link and the hub's
listener carry datagrams between two UDP sockets that stand where WireGuard would be, and the
hub's listener refuses what an Internet client could send instead."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from dvpnd.relay import protocol
from dvpnd.relay.config import HubSide, Link, RelayConfig, RelayConfigError, parse, render
from dvpnd.relay.hubside import HubRelay
from dvpnd.relay.spokeside import SpokeLink
from dvpnd.relay.tls import cert_fingerprint, ensure_self_signed
from dvpnd.wireguard.keys import generate_private_key, public_key

HUB_PRIV, SPOKE_PRIV, OTHER_PRIV = generate_private_key(), generate_private_key(), generate_private_key()
HUB_PUB, SPOKE_PUB, OTHER_PUB = (public_key(k) for k in (HUB_PRIV, SPOKE_PRIV, OTHER_PRIV))
LARGEST = protocol.max_datagram(1420)


def data(n: int = 64, fill: int = 7) -> bytes:
    """A transport-data datagram of WireGuard's shape (type 4, 16-byte blocks + tag)."""
    return bytes([4, 0, 0, 0]) + bytes([fill]) * (n - 4)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Udp(asyncio.DatagramProtocol):
    """Where WireGuard would be: what arrives, with its source."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, payload: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait((payload, addr))


async def udp(port: int) -> tuple[asyncio.DatagramTransport, Udp]:
    proto = Udp()
    t, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", port))
    return t, proto


def hub_side(tmp: Path, wg_port: int, **kw: object) -> HubSide:
    cert, key = tmp / "relay.crt", tmp / "relay.key"
    ensure_self_signed(cert, key, "hub")
    return HubSide(address="127.0.0.1", port=0, cert=str(cert), key=str(key), wg_port=wg_port, largest=LARGEST,
                   hub_public=HUB_PUB, spokes={SPOKE_PUB: protocol.auth_key(HUB_PRIV, SPOKE_PUB)},
                   **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def hub(tmp: Path, wg_port: int, **kw: object) -> AsyncIterator[HubRelay]:
    r = HubRelay(hub_side(tmp, wg_port, **kw))
    await r.start()
    try:
        yield r
    finally:
        await r.close()


def link(tmp: Path, port: int, wg_port: int, auth: bytes | None = None) -> Link:
    return Link(name="hub", url=f"wss://127.0.0.1:{port}{protocol.PATH}",
                fingerprint=cert_fingerprint(tmp / "relay.crt"), ca=None, local_port=free_port(), wg_port=wg_port,
                spoke_public=SPOKE_PUB, hub_public=HUB_PUB,
                auth=auth if auth is not None else protocol.auth_key(SPOKE_PRIV, HUB_PUB), largest=LARGEST)


def run(coro: Callable[[], Awaitable[None]], loop: str = "asyncio") -> None:
    """On asyncio's own loop, or on uvloop (which dvpn-relay uses where it is installed)."""
    factory = asyncio.new_event_loop if loop == "asyncio" else pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(coro(), 60))


LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def authed(session: aiohttp.ClientSession, port: int, priv: bytes = SPOKE_PRIV,
                 **kw: object) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"wss://127.0.0.1:{port}{protocol.PATH}", ssl=insecure(), **kw)  # type: ignore[arg-type]
    nonce = protocol.parse_challenge((await ws.receive(timeout=5)).data)
    pub = public_key(priv)
    await ws.send_str(protocol.render_answer(pub, protocol.proof(protocol.auth_key(priv, HUB_PUB), nonce, pub,
                                                                 HUB_PUB)))
    return ws


# --- pure -------------------------------------------------------------------------------------

def test_only_wireguard_shaped_datagrams_pass() -> None:
    assert protocol.datagram_problem(bytes([1, 0, 0, 0]) + bytes(144), LARGEST) is None
    assert protocol.datagram_problem(bytes([2, 0, 0, 0]) + bytes(88), LARGEST) is None
    assert protocol.datagram_problem(bytes([3, 0, 0, 0]) + bytes(60), LARGEST) is None
    assert protocol.datagram_problem(data(32), LARGEST) is None
    assert protocol.datagram_problem(data(LARGEST), LARGEST) is None
    for bad in (b"", b"\x04\0\0", bytes([1, 0, 0, 0]) + bytes(143), bytes([5, 0, 0, 0]) + bytes(60),
                bytes([4, 1, 0, 0]) + bytes(60), data(31), data(LARGEST + 1), b"GET / HTTP/1.1\r\n\r\n"):
        assert protocol.datagram_problem(bad, LARGEST) is not None, bad


def test_the_proof_needs_the_private_key() -> None:
    nonce = b"n" * 32
    keys = {SPOKE_PUB: protocol.auth_key(HUB_PRIV, SPOKE_PUB)}
    good = protocol.proof(protocol.auth_key(SPOKE_PRIV, HUB_PUB), nonce, SPOKE_PUB, HUB_PUB)
    assert protocol.verify(protocol.Answer(SPOKE_PUB, good), nonce, HUB_PUB, keys)
    assert not protocol.verify(protocol.Answer(SPOKE_PUB, good), b"m" * 32, HUB_PUB, keys)  # another nonce
    # what anyone can compute from public keys alone, or another member's key, proves nothing
    forged = protocol.proof(protocol.auth_key(OTHER_PRIV, HUB_PUB), nonce, SPOKE_PUB, HUB_PUB)
    assert not protocol.verify(protocol.Answer(SPOKE_PUB, forged), nonce, HUB_PUB, keys)
    assert not protocol.verify(protocol.Answer(OTHER_PUB, forged), nonce, HUB_PUB, keys)
    with pytest.raises(ValueError):
        protocol.parse_answer(json.dumps({"key": "x" * 300}))
    with pytest.raises(ValueError):
        protocol.parse_answer(json.dumps({"key": base64.b64encode(b"k" * 31).decode(), "proof": ""}))


def test_the_relay_config_round_trips_and_refuses_an_unpinned_hub(tmp_path: Path) -> None:
    c = RelayConfig(hub=hub_side(tmp_path, 51820), links=(link(tmp_path, 443, 51820),), status_file="/run/x")
    assert parse(json.loads(json.dumps(render(c))), "relay.json") == c
    doc = render(c)
    doc["links"][0]["fingerprint"] = None
    with pytest.raises(RelayConfigError, match="neither a certificate fingerprint nor a CA"):
        parse(doc, "relay.json")
    doc = render(c)
    doc["hub"]["hub_public"] = "short"
    with pytest.raises(RelayConfigError, match="hub.hub_public"):
        parse(doc, "relay.json")


@pytest.mark.parametrize("where, value, says", [
    (("links", 0, "active"), "yes", "links[0].active"),
    (("links", 0, "nudge"), "10.89.0.1; rm -rf /", "links[0].nudge"),
    (("links", 0, "fingerprint"), 12345, "links[0].fingerprint"),
    (("links", 0, "wg_port"), "many", "invalid literal"),
    (("links", 0, "mode"), "udp", "mode 'udp' is not tcp or auto"),
    (("links", 0, "url"), "http://hub/", "is not wss://"),
    (("hub", "port"), None, "relay.json"),
    (("hub", "spokes"), {"not base64!": "x"}, "hub.spokes key"),
])
def test_a_bad_relay_json_is_refused_by_key(tmp_path: Path, where: tuple[object, ...], value: object,
                                             says: str) -> None:
    """dvpnd writes relay.json (0600, root's); still, a file that is not what dvpnd writes gets an
    error naming the key, never a half-read configuration."""
    doc = render(RelayConfig(hub=hub_side(tmp_path, 51820), links=(link(tmp_path, 443, 51820),)))
    node: object = doc
    for k in where[:-1]:
        node = node[k]  # type: ignore[index]
    node[where[-1]] = value  # type: ignore[index]
    with pytest.raises(RelayConfigError, match=re.escape(says)):
        parse(json.loads(json.dumps(doc)), "relay.json")
    for bad in ([], "x", {"links": [{"name": "hub"}]}):
        with pytest.raises(RelayConfigError):
            parse(bad, "relay.json")


def test_the_relay_keeps_its_configuration_when_the_file_turns_bad(tmp_path: Path) -> None:
    from dvpnd.relay.main import Relay

    path = tmp_path / "relay.json"
    hub_side(tmp_path, 51820)  # (its certificate, which the link pins)
    good = RelayConfig(links=(link(tmp_path, free_port(socket.SOCK_STREAM), 51820),))
    path.write_text(json.dumps(render(good)))

    async def main() -> None:
        r = Relay(path)
        await r.load()
        try:
            assert r.config == good and set(r.links) == {"hub"}
            for text in ("{", json.dumps({"links": [{"name": "hub", "url": 7}]}), json.dumps([1, 2])):
                path.write_text(text)
                await r.load()
                assert r.config == good and set(r.links) == {"hub"} and not r.gone
        finally:
            for x in r.links.values():
                await x.close()
    run(main)


def test_a_hostile_relay_status_file_yields_sane_values() -> None:
    """dvpnd reads what the relay writes: whatever that file holds, the snapshot, the page and the
    metrics get counts that are counts and flags that are flags, and the judge of `transport: auto`
    moves nothing on a value of the wrong type."""
    from dvpnd.daemon.relayctl import clean_status
    from dvpnd.relay.choice import TransportJudge

    assert clean_status([1, 2]) is None and clean_status("x") is None
    doc = json.loads('{"pid": "1; kill", "hub": {"connections": "many", "spokes": -3, "accepted": 1e400,'
                     ' "refused": [1, 2], "dropped": true},'
                     ' "links": [{"name": ["hub"], "udp_ok": "false", "udp_ok_for": NaN, "connected": 1,'
                     ' "connects": 12345678901234567890123, "last_error": {"x": 1}}, "junk", 5]}')
    st = clean_status(doc)
    assert st is not None and st["pid"] is None
    assert st["hub"] == {"connections": 0, "spokes": 0, "accepted": 0, "to_wireguard": 0, "to_spokes": 0,
                         "dropped": 0, "probes": 0, "refused": {}}
    (x,) = st["links"]
    assert x["name"] is None and x["udp_ok"] is None and x["udp_ok_for"] is None and x["connected"] is False
    assert x["connects"] == 0 and x["last_error"] is None
    judge = TransportJudge(holddown=5)
    assert not judge.judge("hub", x, 0.0) and judge.current["hub"] == "udp"
    many = clean_status({"links": [{"name": str(i)} for i in range(10_000)],
                         "hub": {"refused": {str(i): i for i in range(10_000)}}})
    assert many is not None and len(many["links"]) == 64 and len(many["hub"]["refused"]) == 64


def test_the_eager_sender_sends_at_once_keeps_order_and_bounds_its_queue() -> None:
    from dvpnd.relay.eager import Sender

    async def main() -> None:
        gate, got = asyncio.Event(), []
        gate.set()

        async def send(d: bytes) -> None:  # (as aiohttp's: it waits only when the socket must drain)
            if not gate.is_set():
                await gate.wait()
            got.append(d)

        s = Sender(send, limit=3)
        assert s.send(b"1") and got == [b"1"] and s.task is None  # done in the caller's step
        gate.clear()
        assert s.send(b"2") and s.task is not None and s.blocked_since is not None
        assert all(s.send(x) for x in (b"3", b"4", b"5")) and not s.send(b"6")  # queue full: dropped
        gate.set()
        await asyncio.wait_for(asyncio.shield(s.task), 5)
        assert got == [b"1", b"2", b"3", b"4", b"5"] and s.task is None and s.blocked_since is None
        assert s.send(b"7") and got[-1] == b"7" and s.sent == 6

        gate.clear()
        assert s.send(b"8") and s.send(b"9")
        await s.close()  # a send still waiting: cancelled, its queue gone
        assert s.task is None and not s.queue and got[-1] == b"7"

        async def broken(d: bytes) -> None:
            raise ConnectionResetError("Cannot write to closing transport")

        b = Sender(broken, limit=3)
        assert not b.send(b"x") and not b.send(b"y") and isinstance(b.error, ConnectionResetError)
    run(main)


# --- on loopback -------------------------------------------------------------------------------

@LOOPS
def test_datagrams_cross_both_ways_and_the_hub_sees_one_stable_endpoint(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        hub_wg_t, hub_wg = await udp(0)
        spoke_wg_t, spoke_wg = await udp(0)
        hub_wg_port, spoke_wg_port = hub_wg_t.get_extra_info("sockname")[1], spoke_wg_t.get_extra_info("sockname")[1]
        async with hub(tmp_path, hub_wg_port) as h:
            sl = SpokeLink(link(tmp_path, h.port, spoke_wg_port))
            await sl.start()
            try:
                for _ in range(100):
                    if sl.ws is not None:
                        break
                    await asyncio.sleep(0.05)
                assert sl.ws is not None, sl.state
                spoke_wg_t.sendto(data(64, 1), ("127.0.0.1", sl.cfg.local_port))
                got, src = await asyncio.wait_for(hub_wg.got.get(), 5)
                assert got == data(64, 1) and src[0] == "127.0.0.1"
                hub_wg_t.sendto(data(96, 2), src)  # WireGuard answers the endpoint it saw
                back, via = await asyncio.wait_for(spoke_wg.got.get(), 5)
                assert back == data(96, 2) and via == ("127.0.0.1", sl.cfg.local_port)
                # garbage from WireGuard's side, or from another local port, is not carried
                spoke_wg_t.sendto(b"\xff" * 40, ("127.0.0.1", sl.cfg.local_port))
                spoke_wg_t.sendto(data(64, 3), ("127.0.0.1", sl.cfg.local_port))
                got, src2 = await asyncio.wait_for(hub_wg.got.get(), 5)
                assert got == data(64, 3) and src2 == src
                # the connection drops: the link connects again, and the hub keeps the same endpoint
                assert sl.ws is not None
                await sl.ws.close()
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if sl.ws is not None and sl.state.connects >= 2:
                        break
                assert sl.state.connects >= 2
                spoke_wg_t.sendto(data(64, 4), ("127.0.0.1", sl.cfg.local_port))
                got, src3 = await asyncio.wait_for(hub_wg.got.get(), 5)
                assert got == data(64, 4) and src3 == src
                assert h.view()["spokes"] == 1 and h.view()["accepted"] == 2
            finally:
                await sl.close()
        hub_wg_t.close()
        spoke_wg_t.close()
    run(main, loop)


def test_a_wrong_pin_or_a_wrong_key_gets_nowhere(tmp_path: Path) -> None:
    async def main() -> None:
        hub_wg_t, hub_wg = await udp(0)
        async with hub(tmp_path, hub_wg_t.get_extra_info("sockname")[1]) as h:
            bad_pin = SpokeLink(replace(link(tmp_path, h.port, 1), fingerprint="00" * 32))
            bad_key = SpokeLink(link(tmp_path, h.port, 1, auth=protocol.auth_key(OTHER_PRIV, HUB_PUB)))
            for sl in (bad_pin, bad_key):
                await sl.start()
            await asyncio.sleep(1.5)
            assert bad_pin.state.connects == 0 and "fingerprint" in (bad_pin.state.last_error or "").lower()
            assert bad_key.state.connects == 0 and "refused" in (bad_key.state.last_error or "")
            assert h.view()["refused"].get("wrong proof", 0) >= 1 and h.view()["spokes"] == 0
            for sl in (bad_pin, bad_key):
                await sl.close()
        hub_wg_t.close()
    run(main)


def test_an_internet_client_is_refused_whatever_it_sends(tmp_path: Path) -> None:
    async def main() -> None:
        hub_wg_t, hub_wg = await udp(0)
        async with hub(tmp_path, hub_wg_t.get_extra_info("sockname")[1], idle=1.0) as h:
            base = f"https://127.0.0.1:{h.port}"
            async with aiohttp.ClientSession() as s:
                async with s.get(base + protocol.PATH, ssl=insecure()) as r:  # not a WebSocket
                    assert r.status == 400
                async with s.get(base + "/status", ssl=insecure()) as r:  # nothing else is served
                    assert r.status == 404
                # no proof: closed 4401 after the wait
                ws = await s.ws_connect(f"wss://127.0.0.1:{h.port}{protocol.PATH}", ssl=insecure())
                await ws.receive(timeout=5)
                await ws.send_str("{}")
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4401
                # authenticated, then: non-WireGuard -> 4400; oversized -> closed; text -> 4400; idle -> 4408
                for payload, codes in ((b"\x09" + bytes(63), {4400}), (data(LARGEST + 16), {1009, 1006})):
                    ws = await authed(s, h.port)
                    assert (await ws.receive(timeout=5)).data == '{"ok": true}'
                    await ws.send_bytes(payload)
                    msg = await ws.receive(timeout=5)
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                    assert ws.close_code in codes, (payload[:4], ws.close_code)  # (1006: cut, 1009: said why)
                ws = await authed(s, h.port)
                await ws.receive(timeout=5)
                msg = await ws.receive(timeout=5)  # says nothing for `idle`
                assert ws.close_code == 4408, msg
                # compression is never negotiated, even when asked for
                ws = await authed(s, h.port, compress=15)
                assert ws.compress == 0
                await ws.close()
            assert hub_wg.got.empty()  # none of it reached WireGuard
            assert h.view()["refused"]["not WireGuard"] == 1 and h.view()["refused"]["idle"] == 1
        hub_wg_t.close()
    run(main)


@LOOPS
def test_connection_caps_and_a_client_that_never_upgrades(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          loop: str) -> None:
    from dvpnd.relay import hubside

    monkeypatch.setattr(hubside, "UPGRADE_TIMEOUT", 1.0)

    async def main() -> None:
        hub_wg_t, _ = await udp(0)
        async with hub(tmp_path, hub_wg_t.get_extra_info("sockname")[1], max_per_ip=3) as h:
            loop = asyncio.get_running_loop()
            silent = []
            for _ in range(2):  # TLS done, then nothing: each holds a place until the deadline
                r, w = await asyncio.open_connection("127.0.0.1", h.port, ssl=insecure())
                silent.append((r, w))
            # no TLS hello at all: a handshake holds a place too (the caps come before TLS)
            silent.append(await asyncio.open_connection("127.0.0.1", h.port))
            await asyncio.sleep(0.2)
            assert h.view()["connections"] == 3
            try:  # the 4th: cut at once, before its handshake
                r4, w4 = await asyncio.open_connection("127.0.0.1", h.port, ssl=insecure())
                assert await asyncio.wait_for(r4.read(), 5) == b""
                w4.close()
            except (ConnectionError, ssl.SSLError):
                pass
            assert h.stats.refused["too many connections"] >= 1
            t0 = loop.time()
            for r, _ in silent:
                assert await asyncio.wait_for(r.read(), 5) == b""
            assert loop.time() - t0 < 3
            assert h.view()["connections"] == 0 and h.stats.refused["no upgrade in time"] == 3
            for _, w in silent:
                w.close()
        hub_wg_t.close()
    run(main, loop)


def test_a_spoke_that_reads_nothing_is_cut_off_with_the_queue_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        hub_wg_t, hub_wg = await udp(0)
        async with hub(tmp_path, hub_wg_t.get_extra_info("sockname")[1], queue=16, stall=1.0) as h:
            async with aiohttp.ClientSession() as s:
                ws = await authed(s, h.port)
                await ws.receive(timeout=5)
                await ws.send_bytes(data(64))  # WireGuard learns the endpoint
                _, src = await asyncio.wait_for(hub_wg.got.get(), 5)
                # the client stops reading; WireGuard sends up to 60 MB at it (more than the
                # kernel's socket buffers on both ends hold), paced so that the hub's UDP socket
                # takes it
                for i in range(40000):
                    hub_wg_t.sendto(data(LARGEST), src)
                    if i % 64 == 0:
                        await asyncio.sleep(0.002)
                        sess = h.sessions.get(SPOKE_PUB)
                        assert sess is None or sess.sender is None or len(sess.sender.queue) <= 16
                        if h.stats.refused["not reading"]:
                            break
                for _ in range(100):
                    await asyncio.sleep(0.1)
                    if h.stats.refused["not reading"]:
                        break
                assert h.stats.refused["not reading"] == 1 and h.view()["dropped"] > 0
                assert h.view()["spokes"] == 0
        hub_wg_t.close()
    run(main)


# --- dvpnd's side: config keys, the relay's plan, the firewall ---------------------------------

def test_transport_keys_load_and_refuse_what_cannot_work(tmp_path: Path) -> None:
    from dvpnd.config.load import load_config
    from dvpnd.errors import ConfigError
    from dvpnd.relay.plan import render_relay
    from tests.test_hubs import TWO

    fp = "ab" * 32
    text = TWO.replace('endpoint: "192.0.2.242:51820",',
                       f'endpoint: "192.0.2.242:51820", transport: tcp, relay_fingerprint: "sha256:{fp.upper()}",')
    p = tmp_path / "dvpnd.yaml"
    p.write_text(text + "wireguard: {listen_port: 51820}\n")
    c = load_config(p)
    b = c.hubs[1]
    assert (b.transport, b.relay_url, b.relay_fingerprint) == ("tcp", "wss://192.0.2.242:443/dvpn/relay/v1", fp)
    assert c.hubs[0].transport == "udp" and c.needs_relay and c.relay_local_port(b) == 51830
    plan = render_relay(c, base64.b64encode(SPOKE_PRIV).decode(), 51820)
    assert plan is not None and plan.hub is None and [x.local_port for x in plan.links] == [51830]
    assert plan.links[0].auth == protocol.auth_key(SPOKE_PRIV, base64.b64decode(b.public_key))
    assert "PRIVATE" not in json.dumps(render(plan)) and base64.b64encode(SPOKE_PRIV).decode() not in json.dumps(
        render(plan))  # the relay never holds the WireGuard key

    for bad, msg in ((TWO.replace('endpoint: "192.0.2.10:51820"', 'endpoint: "192.0.2.10:51820", transport: tcp'),
                      "tcp needs relay_fingerprint"),
                     (TWO.replace('endpoint: "192.0.2.10:51820"', 'endpoint: "192.0.2.10:51820", transport: quic'),
                      "'quic': one of udp, tcp, auto"),
                     (TWO.replace('endpoint: "192.0.2.10:51820"',
                                  'endpoint: "192.0.2.10:51820", relay_url: "https://x/dvpn/relay/v1"'),
                      "must be wss://"),
                     (TWO.replace('endpoint: "192.0.2.10:51820"',
                                  'endpoint: "192.0.2.10:51820", relay_fingerprint: "abc"'), "64 hex digits"),
                     (TWO + "relay: {enabled: true}\n", "relay.enabled: is for a hub")):
        p.write_text(bad)
        with pytest.raises(ConfigError) as e:
            load_config(p)
        assert msg in "\n".join(e.value.problems), (msg, e.value.problems)


def test_a_hub_with_the_relay_opens_its_port_and_carries_its_spokes(tmp_path: Path) -> None:
    from dvpnd.config.load import load_config
    from dvpnd.firewall import ruleset
    from dvpnd.relay.plan import render_relay
    from tests.test_config import HUB, write

    c = load_config(write(tmp_path, HUB + "relay: {enabled: true, port: 8443}\n"))
    text = json.dumps(ruleset.render_ruleset(c))
    assert "8443" in text and "dvpn-relay" in text
    assert "dvpn-relay" not in json.dumps(ruleset.render_ruleset(load_config(write(tmp_path, HUB))))
    plan = render_relay(c, base64.b64encode(HUB_PRIV).decode(), 51820, [base64.b64encode(SPOKE_PUB).decode()])
    assert plan is not None and plan.hub is not None and plan.hub.port == 8443
    assert plan.hub.spokes == {SPOKE_PUB: protocol.auth_key(SPOKE_PRIV, HUB_PUB)}  # what the spoke derives too
    assert plan.hub.cert == str(c.state_dir / "relay.crt")

    # a relay in a container of its own: dvpnd's own pair in a directory the two share, not the
    # state directory (the WireGuard key's)
    own = tmp_path / "shared" / "tls"
    c = load_config(write(tmp_path, HUB + f"relay: {{enabled: true, self_signed_dir: {own}}}\n"))
    plan = render_relay(c, base64.b64encode(HUB_PRIV).decode(), 51820, [])
    assert plan is not None and plan.hub is not None
    assert (plan.hub.cert, plan.hub.key) == (str(own / "relay.crt"), str(own / "relay.key"))
    from dvpnd.errors import ConfigError
    with pytest.raises(ConfigError, match="self_signed_dir"):
        load_config(write(tmp_path, HUB + f"relay: {{enabled: true, self_signed_dir: {own}, cert: /a.crt, "
                                          "key: /a.key}\n"))


def test_auto_moves_to_tcp_when_udp_fails_and_back_after_the_hold_down() -> None:
    from dvpnd.relay.choice import TransportJudge

    j = TransportJudge(holddown=30)
    assert not j.judge("H", None, 0.0) and j.current["H"] == "udp"  # the relay says nothing: stay
    assert not j.judge("H", {"udp_ok": False, "connected": False}, 1.0)  # TCP not up (yet): stay
    assert j.judge("H", {"udp_ok": False, "connected": True}, 2.0) and j.current["H"] == "tcp"
    assert not j.judge("H", {"udp_ok": True, "udp_ok_for": 29.0, "connected": True}, 31.0)  # held down
    assert j.judge("H", {"udp_ok": True, "udp_ok_for": 30.0, "connected": True}, 32.0) and j.current["H"] == "udp"
    assert j.switches["H"] == 2 and "back to UDP" in j.reasons["H"]


def test_udp_probes_are_answered_only_for_a_carried_spoke_and_smaller_than_asked(tmp_path: Path) -> None:
    nonce = b"z" * 16
    k = protocol.auth_key(SPOKE_PRIV, HUB_PUB)
    probe = protocol.render_probe(k, SPOKE_PUB, nonce)
    assert len(probe) == protocol.PROBE_LEN and protocol.datagram_problem(probe, LARGEST) is not None  # no WG type

    async def main() -> None:
        hub_wg_t, _ = await udp(0)
        port = free_port()
        async with hub(tmp_path, hub_wg_t.get_extra_info("sockname")[1], probe_port=port) as h:
            asker_t, asker = await udp(0)
            asker_t.sendto(probe, ("127.0.0.1", port))
            reply, _ = await asyncio.wait_for(asker.got.get(), 5)
            assert protocol.probe_reply_valid(k, nonce, reply) and len(reply) < len(probe)
            # another key's MAC, a replayed probe with a forged key, garbage: no answer
            forged = protocol.render_probe(protocol.auth_key(OTHER_PRIV, HUB_PUB), SPOKE_PUB, nonce)
            for bad in (forged, protocol.render_probe(k, OTHER_PUB, nonce), b"\xff" * 68, b"x"):
                asker_t.sendto(bad, ("127.0.0.1", port))
            await asyncio.sleep(0.5)
            assert asker.got.empty() and h.stats.refused["bad probe"] == 2  # (garbage is not even counted)
            for _ in range(40):  # at most 20 a second from one address
                asker_t.sendto(probe, ("127.0.0.1", port))
            await asyncio.sleep(0.5)
            assert asker.got.qsize() <= 20
            asker_t.close()
        hub_wg_t.close()
    run(main)
