"""The resolver's decision for one query (pure, on dnslib's records): answer it from the
roster's names, hand it to the upstream, refuse it, or drop it.

- Not a query (a response, say): dropped, so that no two resolvers can bounce packets.
- An opcode other than QUERY: NOTIMP; not exactly one question: FORMERR.
- In the overlay's zones (NAME.ZONE and the overlay prefix's in-addr.arpa): authoritative.
  SERVFAIL before the first verified roster (not NXDOMAIN, which clients cache); a name of the
  roster: its A (or PTR) record, and NODATA (NOERROR, no answer, the SOA) for other types; the
  zone's apex: its SOA, NODATA otherwise; anything else in the zones: NXDOMAIN with the SOA.
  TTLs are TTL seconds, so that a roster change shows within seconds.
- Elsewhere: forwarded to the upstream, or REFUSED when forwarding is off.
EDNS0: a query with an OPT record gets one back (the UDP payload we take: EDNS_PAYLOAD)."""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import CLASS, EDNS0, OPCODE, PTR, QTYPE, RCODE, RR, SOA, A, DNSLabel, DNSRecord

from dvpnd.dns.names import Names, labels_of

TTL = 5
EDNS_PAYLOAD = 1232  # the DNS flag day's size: no fragmentation on any path
CLASS_ANY = 255


@dataclass(frozen=True)
class Decision:
    kind: str  # "reply" | "forward" | "drop"
    reply: DNSRecord | None = None
    in_zone: bool = False


def udp_limit(query: DNSRecord) -> int:
    """The largest UDP reply the client takes: 512 without EDNS0, else its size (at most ours)."""
    opt = next((r for r in query.ar if r.rtype == QTYPE.OPT), None)
    return 512 if opt is None else max(512, min(int(opt.rclass), EDNS_PAYLOAD))


def _reply(query: DNSRecord, rcode: int, authoritative: bool, forwarding: bool) -> DNSRecord:
    r = query.reply(ra=int(forwarding), aa=int(authoritative))
    r.header.rcode = rcode
    r.ar = []
    if any(x.rtype == QTYPE.OPT for x in query.ar):
        r.add_ar(EDNS0(udp_len=EDNS_PAYLOAD))
    return r


def _soa(names: Names, apex: tuple[str, ...]) -> RR:
    zone = ".".join(apex)
    main = ".".join(names.zone)
    return RR(DNSLabel(zone), QTYPE.SOA, ttl=TTL,
              rdata=SOA(f"ns.{main}", f"hostmaster.{main}", (names.serial, 60, 30, 3600, TTL)))


def decide(query: DNSRecord, names: Names | None, zone: tuple[str, ...], reverse: tuple[str, ...],
           forwarding: bool) -> Decision:
    h = query.header
    if h.qr:
        return Decision("drop")
    if h.opcode != OPCODE.QUERY:
        return Decision("reply", _reply(query, RCODE.NOTIMP, False, forwarding))
    if len(query.questions) != 1:
        return Decision("reply", _reply(query, RCODE.FORMERR, False, forwarding))
    q = query.questions[0]
    labels = labels_of(str(q.qname))
    in_zone = _under(labels, zone) or _under(labels, reverse)
    if not in_zone:
        if forwarding:
            return Decision("forward")
        return Decision("reply", _reply(query, RCODE.REFUSED, False, forwarding))
    if q.qclass not in (CLASS.IN, CLASS_ANY):
        return Decision("reply", _reply(query, RCODE.REFUSED, False, forwarding), True)
    if names is None:
        return Decision("reply", _reply(query, RCODE.SERVFAIL, False, forwarding), True)
    apex = names.zone if _under(labels, names.zone) else names.reverse
    r = _reply(query, RCODE.NOERROR, True, forwarding)
    qt = q.qtype
    if labels in names.forward:
        if qt in (QTYPE.A, QTYPE.ANY):
            r.add_answer(RR(q.qname, QTYPE.A, ttl=TTL, rdata=A(str(names.forward[labels]))))
        else:
            r.add_auth(_soa(names, apex))
    elif labels in names.backward:
        if qt in (QTYPE.PTR, QTYPE.ANY):
            r.add_answer(RR(q.qname, QTYPE.PTR, ttl=TTL, rdata=PTR(".".join(names.backward[labels]) + ".")))
        else:
            r.add_auth(_soa(names, apex))
    elif labels == apex:
        if qt in (QTYPE.SOA, QTYPE.ANY):
            r.add_answer(_soa(names, apex))
        else:
            r.add_auth(_soa(names, apex))
    elif _above_a_name(labels, names):  # (an empty non-terminal: NODATA, not NXDOMAIN)
        r.add_auth(_soa(names, apex))
    else:
        r.header.rcode = RCODE.NXDOMAIN
        r.add_auth(_soa(names, apex))
    return Decision("reply", r, True)


def _under(labels: tuple[str, ...], zone: tuple[str, ...]) -> bool:
    return len(labels) >= len(zone) and labels[len(labels) - len(zone):] == zone


def _above_a_name(labels: tuple[str, ...], names: Names) -> bool:
    n = len(labels)
    return any(len(k) > n and k[len(k) - n:] == labels for k in (*names.forward, *names.backward))


def truncated(reply: DNSRecord) -> DNSRecord:
    """The reply without its records and with TC set: the client asks again over TCP."""
    t = DNSRecord(header=reply.header, questions=reply.questions)
    t.header.tc = 1
    t.ar = [x for x in reply.ar if x.rtype == QTYPE.OPT]
    return t


def same_question(a: DNSRecord, b: DNSRecord) -> bool:
    """Whether an upstream's answer is to the question we asked (name compared without case)."""
    if len(a.questions) != 1 or len(b.questions) != 1:
        return False
    x, y = a.questions[0], b.questions[0]
    return labels_of(str(x.qname)) == labels_of(str(y.qname)) and (x.qtype, x.qclass) == (y.qtype, y.qclass)
