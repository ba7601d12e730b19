"""The overlay's names in the lab (confidential mode, every node with `dns.enabled`, the upstream
a stub in the outside namespace): real clients, dig and getent, inside the nodes."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from dvpnd.lab import cluster as lab
from dvpnd.roster.model import Member
from dvpnd.wireguard.keys import encode_key, generate_private_key, public_key
from tests.lab.conftest import PROBE, Lab, rss_kib

pytestmark = pytest.mark.root
SPOKES = ("spoke-a", "spoke-b", "spoke-c")
ZONE = "dvpn.internal"


def dig(C: Lab, node: str, server: str, *query: str) -> tuple[str, list[str]]:
    """(status, answers) of one dig in `node`, asking `server` (2 s, one try)."""
    out = C.run(node, "dig", f"@{server}", "+time=2", "+tries=1", "+noall", "+comments", "+answer", *query,
                check=False).stdout
    status = next((x.split("status:")[1].split(",")[0].strip() for x in out.splitlines() if "status:" in x),
                  "no answer")
    answers = [line.split()[-1] for line in out.splitlines() if line and not line.startswith(";")]
    return status, answers


@pytest.fixture
def upstream(C: Lab) -> Iterator[object]:
    proc = C.popen("outside", sys.executable, PROBE, "upstream", lab.OUTSIDE_PUBLIC, "600")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.terminate()
    proc.communicate(timeout=10)


def test_every_spoke_resolves_every_spoke_and_the_rest_through_the_upstream(C: Lab, upstream: object) -> None:
    for s in SPOKES:
        for t in SPOKES:
            assert dig(C, s, C.ip(s), f"{t}.{ZONE}") == ("NOERROR", [C.ip(t)]), (s, t)
    a = C.ip("spoke-a")
    # the reverse zone, no such name, a name without the asked type, TCP, the zone's SOA
    assert dig(C, "spoke-a", a, "-x", C.ip("spoke-c")) == ("NOERROR", [f"spoke-c.{ZONE}."])
    assert dig(C, "spoke-a", a, f"nobody.{ZONE}") == ("NXDOMAIN", [])
    assert dig(C, "spoke-a", a, f"spoke-b.{ZONE}", "AAAA") == ("NOERROR", [])
    assert dig(C, "spoke-a", a, "+tcp", f"SPOKE-B.{ZONE}") == ("NOERROR", [C.ip("spoke-b")])
    assert dig(C, "spoke-a", a, ZONE, "SOA")[0] == "NOERROR"
    # names outside the zone: the upstream's answer, through the resolver
    assert dig(C, "spoke-b", C.ip("spoke-b"), "www.example.org") == ("NOERROR", ["198.51.100.80"])
    assert dig(C, "spoke-b", C.ip("spoke-b"), "nothing.example.org") == ("NXDOMAIN", [])
    # the hub, for its own tools, on 127.0.0.1
    assert dig(C, "hub", "127.0.0.1", f"spoke-a.{ZONE}") == ("NOERROR", [a])

    # getent (glibc's resolver, as applications) with the node's resolv.conf at dvpnd
    node = C.nodes["spoke-c"]
    conf = Path(node.dir) / "resolv.conf"
    conf.write_text(f"nameserver {C.ip('spoke-c')}\n")
    out = C.run("spoke-c", "sh", "-c", f"mount --bind {conf} /etc/resolv.conf && "
                f"getent hosts spoke-a.{ZONE} && getent hosts www.example.org").stdout.split()
    assert out[:2] == [a, f"spoke-a.{ZONE}"] and out[2] == "198.51.100.80", out

    # from the Internet side: nothing answers, on the public address or anywhere
    for s in SPOKES:
        assert dig(C, "outside", C.public(s), f"spoke-a.{ZONE}")[0] == "no answer"
    assert dig(C, "outside", C.public("hub"), f"spoke-a.{ZONE}")[0] == "no answer"

    st = json.loads(C.dvpnctl("spoke-a", "dns", "--json").stdout)
    assert st["ready"] and [f"{s}.{ZONE}" for s in SPOKES] == [n for n, _ in st["names"]]
    assert st["upstreams"] == [lab.OUTSIDE_PUBLIC] and st["answers"]["zone NOERROR"] >= 1
    metrics = C.run("spoke-b", "curl", "-s", "http://127.0.0.1:9586/metrics").stdout
    assert 'dvpnd_dns_answers_total{rcode="NOERROR",source="forward"}' in metrics
    assert f"dvpnd_dns_names {float(len(SPOKES))}" in metrics


def test_a_member_added_resolves_everywhere_within_5s_and_a_removed_one_stops(C: Lab) -> None:
    auth = lab.authority()
    old = auth.current()
    assert old is not None
    extra = Member("spoke-x", IPv4Address("10.88.0.99"), encode_key(public_key(generate_private_key())),
                   encode_key(public_key(generate_private_key())), aliases=("pg-x",))
    try:
        t0 = time.monotonic()
        auth.amend(old.members + (extra,), 3600)
        lab.publish(C.nodes["hub"], auth.roster_file)
        for s in ("spoke-a", "spoke-c"):
            C.wait(f"spoke-x resolving on {s}",
                   lambda s=s: dig(C, s, C.ip(s), f"spoke-x.{ZONE}") == ("NOERROR", ["10.88.0.99"]),
                   timeout=10, step=0.1)
        added = time.monotonic() - t0
        assert dig(C, "spoke-b", C.ip("spoke-b"), f"pg-x.{ZONE}") == ("NOERROR", ["10.88.0.99"])  # its signed alias
        t0 = time.monotonic()
        auth.amend(old.members, 3600)
        lab.publish(C.nodes["hub"], auth.roster_file)
        for s in ("spoke-a", "spoke-c"):
            C.wait(f"spoke-x gone on {s}", lambda s=s: dig(C, s, C.ip(s), f"spoke-x.{ZONE}")[0] == "NXDOMAIN",
                   timeout=10, step=0.1)
        removed = time.monotonic() - t0
        print(f"\na member added: its name resolves on two spokes {added:.1f}s later; removed: gone {removed:.1f}s")
        assert added <= 5 and removed <= 5
    finally:
        if auth.current() != old:
            auth.amend(old.members, 3600)
            lab.publish(C.nodes["hub"], auth.roster_file)



def test_junk_and_a_flood_leave_the_resolver_answering_with_its_memory_bounded(C: Lab) -> None:
    a = C.ip("spoke-a")
    pid = C.pid("spoke-a")
    before = rss_kib(pid)
    r = json.loads(C.run("spoke-a", sys.executable, PROBE, "dnsjunk", a, "4000").stdout)
    assert r["sent"] == 4000
    # a flood: 10,000 queries sent without waiting, half of them for names outside the zone
    # (forwarded: at most 256 wait for the upstream, the rest get SERVFAIL at once)
    r = json.loads(C.run("spoke-a", sys.executable, PROBE, "dnsflood", a, "10000", ZONE, timeout=120).stdout)
    print(f"\na flood of {r['sent']} queries: {r['replies']} answered")
    assert dig(C, "spoke-a", a, f"spoke-b.{ZONE}") == ("NOERROR", [C.ip("spoke-b")])
    after = rss_kib(pid)
    print(f"4,000 malformed datagrams and the flood: dvpnd RSS {before} -> {after} KiB")
    assert after - before < 16 * 1024
    answers = json.loads(C.dvpnctl("spoke-a", "dns", "--json").stdout)["answers"]
    assert answers.get("malformed -", 0) >= 1000 and answers.get("zone NXDOMAIN", 0) >= 100
