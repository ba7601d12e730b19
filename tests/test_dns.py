"""The overlay's resolver: its answers (pure), where it forwards (pure), and the server on
loopback with a stub upstream (real sockets, no root)."""

from __future__ import annotations

import asyncio
import socket
import struct
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, TXT, A, DNSRecord

from dvpnd.dns.answer import decide, udp_limit
from dvpnd.dns.names import render_names, reverse_zone
from dvpnd.dns.server import MAX_INFLIGHT, Resolver
from dvpnd.dns.upstream import find_upstreams, upstreams_from
from dvpnd.roster.model import Member, Roster

NET = IPv4Network("10.88.0.0/24")
ROSTER = Roster(NET, 7, 0, 0, tuple(Member(n, IPv4Address(a), "t", "o") for n, a in
                                    (("spoke-a", "10.88.0.11"), ("spoke-b", "10.88.0.12"), ("db.eu", "10.88.0.13"))))
NAMES = render_names("dvpn.internal", NET, ROSTER)
ZONE, REV = ("dvpn", "internal"), reverse_zone(NET)


def ask(name: str, qtype: str = "A", names: object = NAMES, forwarding: bool = True) -> tuple[str, object]:
    d = decide(DNSRecord.question(name, qtype), names, ZONE, REV, forwarding)  # type: ignore[arg-type]
    if d.reply is None:
        return d.kind, None
    return RCODE.get(d.reply.header.rcode), ([str(r.rdata) for r in d.reply.rr] or
                                              [QTYPE.get(r.rtype) for r in d.reply.auth])


def test_answers_from_the_roster_with_nxdomain_and_nodata_told_apart() -> None:
    assert ask("spoke-a.dvpn.internal") == ("NOERROR", ["10.88.0.11"])
    assert ask("SPOKE-B.Dvpn.Internal.") == ("NOERROR", ["10.88.0.12"])  # names have no case
    assert ask("spoke-a.dvpn.internal", "AAAA") == ("NOERROR", ["SOA"])  # NODATA: the name exists
    assert ask("spoke-z.dvpn.internal") == ("NXDOMAIN", ["SOA"])
    assert ask("eu.dvpn.internal") == ("NOERROR", ["SOA"])  # above db.eu: an empty non-terminal
    assert ask("dvpn.internal", "SOA")[0] == "NOERROR" and ask("dvpn.internal", "MX") == ("NOERROR", ["SOA"])
    assert ask("12.0.88.10.in-addr.arpa", "PTR") == ("NOERROR", ["spoke-b.dvpn.internal."])
    assert ask("99.0.88.10.in-addr.arpa", "PTR") == ("NXDOMAIN", ["SOA"])
    assert ask("spoke-a.dvpn.internal", "ANY") == ("NOERROR", ["10.88.0.11"])
    d = decide(DNSRecord.question("spoke-a.dvpn.internal"), NAMES, ZONE, REV, True)
    assert d.reply is not None and d.reply.header.aa and all(r.ttl <= 5 for r in d.reply.rr)


def test_before_the_first_roster_the_zone_is_servfail_not_nxdomain() -> None:
    assert render_names("dvpn.internal", NET, None) is None
    assert ask("spoke-a.dvpn.internal", names=None) == ("SERVFAIL", [])
    assert ask("11.0.88.10.in-addr.arpa", "PTR", names=None) == ("SERVFAIL", [])
    assert ask("example.org", names=None) == ("forward", None)  # the rest works meanwhile


def test_outside_the_zones_forward_or_refuse_and_never_answer_a_response() -> None:
    assert ask("example.org") == ("forward", None)
    assert ask("internal") == ("forward", None) and ask("xdvpn.internal") == ("forward", None)
    assert ask("example.org", forwarding=False) == ("REFUSED", [])
    response = DNSRecord.question("spoke-a.dvpn.internal").reply()
    assert decide(response, NAMES, ZONE, REV, True).kind == "drop"  # no ping-pong between resolvers
    two = DNSRecord.question("spoke-a.dvpn.internal")
    two.add_question(*DNSRecord.question("spoke-b.dvpn.internal").questions)
    d = decide(two, NAMES, ZONE, REV, True)
    assert d.reply is not None and d.reply.header.rcode == RCODE.FORMERR
    chaos = DNSRecord.question("spoke-a.dvpn.internal", "TXT", "CH")
    d = decide(chaos, NAMES, ZONE, REV, True)
    assert d.reply is not None and d.reply.header.rcode == RCODE.REFUSED


def test_edns0_is_answered_and_bounds_the_udp_reply() -> None:
    q = DNSRecord.question("spoke-a.dvpn.internal")
    assert udp_limit(q) == 512
    q.add_ar(EDNS0(udp_len=4096))
    assert udp_limit(q) == 1232  # ours caps it
    d = decide(q, NAMES, ZONE, REV, True)
    assert d.reply is not None and [r.rtype for r in d.reply.ar] == [QTYPE.OPT]


def test_upstreams_never_lead_back_to_dvpnd(tmp_path: Path) -> None:
    text = ("# generated\nnameserver 127.0.0.11\nnameserver 127.0.0.53\nnameserver 10.88.0.11\n"
            "nameserver 10.88.0.12\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver junk\n"
            "nameserver 192.0.2.53\nnameserver 198.51.100.53\nnameserver 203.0.113.53\nnameserver 203.0.113.54\n")
    assert upstreams_from(text, ["10.88.0.11"], NET) == ["192.0.2.53", "fe80::1", "198.51.100.53"]
    resolved, stub = tmp_path / "resolved.conf", tmp_path / "resolv.conf"
    stub.write_text("nameserver 127.0.0.53\n")
    assert find_upstreams((), ["10.88.0.11"], NET, [resolved, stub])[0] == []  # only the stub: nobody
    resolved.write_text("nameserver 192.0.2.1\n")
    assert find_upstreams((), ["10.88.0.11"], NET, [resolved, stub]) == (["192.0.2.1"], str(resolved))
    assert find_upstreams(("198.51.100.1",), [], NET, [resolved])[1] == "dns.upstream"


# --- on loopback -------------------------------------------------------------------------------

class Stub(asyncio.DatagramProtocol):
    """An upstream: answers www.example.org, and lies as asked (another ID, another question)."""

    def __init__(self, lie: str = "") -> None:
        self.lie = lie
        self.seen = 0
        self.t: asyncio.DatagramTransport | None = None

    def connection_made(self, t: asyncio.BaseTransport) -> None:
        self.t = t  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen += 1
        q = DNSRecord.parse(data)
        if self.lie == "silent":
            return
        r = q.reply()
        r.add_answer(RR(q.q.qname, QTYPE.A, ttl=60, rdata=A("198.51.100.80")))
        if self.lie == "big":
            for i in range(40):
                r.add_answer(RR(q.q.qname, QTYPE.TXT, rdata=TXT("x" * 60 + str(i))))
        if self.lie == "id":
            r.header.id ^= 1
        if self.lie == "question":
            r = DNSRecord.question("evil.example.org").reply()
            r.header.id = q.header.id
            r.add_answer(RR("evil.example.org", QTYPE.A, rdata=A("203.0.113.66")))
        assert self.t is not None
        self.t.sendto(r.pack(), addr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def query(port: int, name: str, qtype: str = "A", tcp: bool = False, timeout: float = 5) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if tcp:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        wire = q.pack()
        w.write(struct.pack("!H", len(wire)) + wire)
        (n,) = struct.unpack("!H", await asyncio.wait_for(r.readexactly(2), timeout))
        data = await r.readexactly(n)
        w.close()
        return DNSRecord.parse(data)
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not got.done():
                got.set_result(data)

    t, _ = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", port))
    try:
        t.sendto(q.pack())
        return DNSRecord.parse(await asyncio.wait_for(got, timeout))
    finally:
        t.close()


@pytest.mark.parametrize("lie", ["", "id", "question", "silent", "big"])
def test_the_server_answers_and_takes_only_a_matching_answer_from_upstream(lie: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stub = Stub(lie)
        st, _ = await loop.create_datagram_endpoint(lambda: stub, local_addr=("127.0.0.2", 0))
        port = free_port()
        names: list[object] = [NAMES]
        r = Resolver(lambda: names[0], ZONE, REV, lambda: ["127.0.0.2"], port=port)  # type: ignore[arg-type,return-value]
        r.upstream_port = st.get_extra_info("sockname")[1]
        await r.start(["127.0.0.1"], port)
        try:
            a = await query(port, "spoke-b.dvpn.internal")
            assert [str(x.rdata) for x in a.rr] == ["10.88.0.12"]
            assert [str(x.rdata) for x in (await query(port, "spoke-b.dvpn.internal", tcp=True)).rr] == ["10.88.0.12"]
            fwd = await query(port, "www.example.org")
            if lie == "":
                assert RCODE.get(fwd.header.rcode) == "NOERROR" and [str(x.rdata) for x in fwd.rr] == ["198.51.100.80"]
            elif lie == "big":  # more than 512 bytes: TC, so the client asks again over TCP
                assert fwd.header.tc and not fwd.rr
            else:  # another ID, another question, or nothing: SERVFAIL after the timeout, never the lie
                assert RCODE.get(fwd.header.rcode) == "SERVFAIL" and not fwd.rr
            names[0] = None  # (as before the first roster)
            assert RCODE.get((await query(port, "spoke-b.dvpn.internal")).header.rcode) == "SERVFAIL"
        finally:
            await r.close()
            st.close()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_junk_and_a_flood_cost_a_bounded_amount_and_answers_go_on() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stub = Stub("silent")  # every forwarded query waits its full timeout
        st, _ = await loop.create_datagram_endpoint(lambda: stub, local_addr=("127.0.0.2", 0))
        port = free_port()
        r = Resolver(lambda: NAMES, ZONE, REV, lambda: ["127.0.0.2"], port=port)
        r.upstream_port = st.get_extra_info("sockname")[1]
        await r.start(["127.0.0.1"], port)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                for i in range(2000):
                    junk = [b"", b"\x00" * 11, b"\xff" * 700, DNSRecord.question("a.example").pack()[:20],
                            bytes(5000)][i % 5]
                    s.sendto(junk, ("127.0.0.1", port))
                    s.sendto(DNSRecord.question(f"n{i}.example.net").pack(), ("127.0.0.1", port))
                    if i % 10 == 0:
                        await asyncio.sleep(0.001)  # (paced, so the kernel's buffer drops none)
            await asyncio.sleep(0.5)
            assert r.inflight <= MAX_INFLIGHT and stub.seen <= MAX_INFLIGHT + 50
            a = await query(port, "spoke-a.dvpn.internal", timeout=2)  # the zone is not held up
            assert [str(x.rdata) for x in a.rr] == ["10.88.0.11"]
            # dropped unanswered; and past MAX_INFLIGHT waiting forwards, SERVFAIL at once
            assert r.counts[("malformed", "-")] >= 1000 and r.counts[("forward", "SERVFAIL")] >= 500
            # TCP: a client that sends half a length and stops is dropped at TCP_IDLE; the cap holds
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(70)]
            await asyncio.sleep(0.3)
            assert r.tcp_clients <= 64
            for _, w in conns:
                w.close()
        finally:
            await r.close()
            st.close()
    asyncio.run(asyncio.wait_for(main(), 60))


# --- dns: in dvpnd.yaml ---------------------------------------------------------------------------

CONF = """\
role: spoke
name: spoke-a
overlay: {mode: confidential, network: 10.88.0.0/24, address: 10.88.0.11, min_serial: 1,
          authority: "rDil+hYsR15HZgPxNGP9i7B8ixZ/Wc5ppMGg/OS9hoY="}
hub: {public_key: Pz2bp3hT4R0pt40UA0jT0rfnpbqLkDHIkVLazU5vAW4=, endpoint: "192.0.2.10:51820"}
"""


@pytest.mark.parametrize("dns, problem", [
    ("{enabled: true, zone: 'bad_zone.internal'}", "dns.zone: 'bad_zone.internal' is not a domain name"),
    ("{enabled: true, zone: 0.88.10.in-addr.arpa}", "is a reverse zone"),
    ("{enabled: true, listen: [10.88.0.11, nope]}", "dns.listen[1]: 'nope' is not an IP address"),
    ("{enabled: true, listen: []}", "dns.listen: needs at least one address"),
    ("{enabled: true, port: 70000}", "out of range"),
    ("{enabled: true, upstream: 8.8.8.8.8}", "dns.upstream: '8.8.8.8.8' is not an IP address"),
    ("{enabled: yes please}", "dns.enabled"),
    ("{enabled: true, resolved: sometimes}", "dns.resolved"),
    ("{enable: true}", "dns.enable"),
])
def test_bad_dns_keys_are_refused_by_name(tmp_path: Path, dns: str, problem: str) -> None:
    from dvpnd.config.load import load_config
    from dvpnd.errors import ConfigError

    p = tmp_path / "dvpnd.yaml"
    p.write_text(CONF + f"dns: {dns}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert any(problem in x for x in e.value.problems), e.value.problems


def test_dns_defaults_and_routed_mode(tmp_path: Path) -> None:
    from dvpnd.config.load import load_config
    from dvpnd.errors import ConfigError

    p = tmp_path / "dvpnd.yaml"
    p.write_text(CONF + "dns: {enabled: true, zone: Names.Example.}\n")
    d = load_config(p).dns
    assert (d.enabled, d.zone, d.listen, d.port, d.upstream, d.forward) == (
        True, "names.example", ("10.88.0.11",), 53, (), True)
    p.write_text(CONF.replace("mode: confidential, ", "").replace("min_serial: 1,", "").replace(
        'authority: "rDil+hYsR15HZgPxNGP9i7B8ixZ/Wc5ppMGg/OS9hoY="', "") + "dns: {enabled: true}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert any("needs overlay.mode: confidential" in x for x in e.value.problems), e.value.problems


RESOLVECTL_STATUS = """Global
       Protocols: +LLMNR +mDNS -DNSOverTLS DNSSEC=no/unsupported
resolv.conf mode: stub

Link 2 (eth0)
Current Scopes: DNS
     Protocols: +DefaultRoute +LLMNR -mDNS -DNSOverTLS DNSSEC=no/unsupported

Link 5 (wg0)
Current Scopes: none
     Protocols: -DefaultRoute +LLMNR -mDNS -DNSOverTLS DNSSEC=no/unsupported
"""


def test_resolved_gets_the_zones_as_routing_only_domains_on_the_overlay_link(tmp_path: Path) -> None:
    from dvpnd.config.load import load_config
    from dvpnd.dns.resolved import parse_links, render_commands, render_link_dns, same_namespace

    p = tmp_path / "dvpnd.yaml"
    p.write_text(CONF + "dns: {enabled: true}\n")
    want = render_link_dns(load_config(p))
    assert render_commands(want) == [
        ["resolvectl", "dns", "wg0", "10.88.0.11"],
        ["resolvectl", "domain", "wg0", "~dvpn.internal", "~0.88.10.in-addr.arpa"],
        ["resolvectl", "default-route", "wg0", "false"]]
    p.write_text(CONF + "dns: {enabled: true, port: 5353}\n")
    assert render_link_dns(load_config(p)).servers == ("10.88.0.11:5353",)

    theirs = parse_links(RESOLVECTL_STATUS)
    assert theirs == {(2, "eth0"), (5, "wg0")}
    assert same_namespace(theirs, {(1, "lo"), (2, "eth0"), (5, "wg0")}, "wg0")
    # a lab node or a unit in a namespace of its own: resolved's links are not ours; setting
    # "index 5" would change an unrelated link of the machine
    assert not same_namespace(theirs, {(1, "lo"), (2, "eth0"), (3, "wg0")}, "wg0")
    assert not same_namespace(theirs, {(1, "lo"), (2, "eth0"), (5, "wg0"), (6, "x")} - {(2, "eth0")}, "wg0")
    assert not same_namespace(parse_links("Link 2 (eth0)\n"), {(2, "eth0")}, "wg0")
    assert not same_namespace(set(), {(5, "wg0")}, "wg0")


@pytest.mark.process
def test_the_service_sets_resolved_once_per_link_and_only_in_its_namespace(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in `resolvectl` on PATH (systemd-resolved is exercised for real in the VM test)."""
    from dvpnd.config.load import load_config
    from dvpnd.dns import resolved
    from dvpnd.dns.service import DnsService

    index = socket.if_nameindex()[0]  # (this process's first link stands in for wg0)
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    status = tmp_path / "status"
    fake = bin_dir / "resolvectl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = status ] && cat {status}\nexit 0\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(resolved, "RESOLVED_RUNTIME", tmp_path)
    p = tmp_path / "dvpnd.yaml"
    p.write_text(CONF + f"wireguard: {{interface: {index[1]}}}\ndns: {{enabled: true}}\n")
    config = load_config(p)
    assert config.wireguard.interface == index[1]

    async def go() -> list[str]:
        svc = DnsService(config, lambda: ROSTER)
        monkeypatch.setattr(resolved, "RESOLVED_RUNTIME", tmp_path / "absent")
        await svc.tend_resolved()  # resolved not running (yet): looked for again next time, nothing run
        assert "not running" in svc.system and svc._system_index is None and not calls.exists()
        monkeypatch.setattr(resolved, "RESOLVED_RUNTIME", tmp_path)
        status.write_text(f"Link {index[0] + 100} ({index[1]})\n")  # another namespace's links
        await svc.tend_resolved()
        assert "another namespace" in svc.system, svc.system
        status.write_text("".join(f"Link {i} ({n})\n" for i, n in socket.if_nameindex()))
        await svc.tend_resolved()  # the same link: not asked again
        svc._system_index = None  # the link made again
        await svc.tend_resolved()
        await svc.tend_resolved()
        assert svc.system.startswith(f"systemd-resolved: {index[1]} (index {index[0]})"), svc.system
        return calls.read_text().splitlines()

    assert asyncio.run(go()) == [
        "status --no-pager",
        "status --no-pager", f"dns {index[1]} 10.88.0.11", f"domain {index[1]} ~dvpn.internal ~0.88.10.in-addr.arpa",
        f"default-route {index[1]} false"]
