"""The dvpn policy as one nftables table, `inet dvpn`, applied in one transaction.

render_ruleset() is pure: it returns the whole libnftables JSON document. It adds the table,
deletes it and rebuilds it in the same batch, so the kernel swaps the old policy for the new
one atomically and there is no moment without a policy. No other table is touched and the
ruleset is never flushed: Docker's and Dstack's rules stay as they are. The base chains
accept by default and drop only what the policy is about (the overlay interface, and
traffic from interfaces that are not trusted), because a drop in any table's base chain
is final for the packet.

Drift: after an apply the live table is listed and remembered (normalized); a later pass
that lists something else (the table deleted or edited by hand) applies again."""

from __future__ import annotations

import json
from typing import Any

from dvpnd.config.model import Config

FAMILY = "inet"
TABLE = "dvpn"
Json = dict[str, Any]


def table_ref() -> Json:
    return {"family": FAMILY, "name": TABLE}


def _chain(name: str, hook: str) -> Json:
    return {"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name, "type": "filter",
                              "hook": hook, "prio": 0, "policy": "accept"}}}


def _rule(chain: str, *expr: Json, comment: str | None = None) -> Json:
    rule: Json = {"family": FAMILY, "table": TABLE, "chain": chain, "expr": list(expr)}
    if comment:
        rule["comment"] = comment
    return {"add": {"rule": rule}}


def _set(name: str, type_: str, elements: list[Any], interval: bool = False) -> list[Json]:
    s: Json = {"family": FAMILY, "table": TABLE, "name": name, "type": type_}
    if interval:
        s["flags"] = ["interval"]
    out: list[Json] = [{"add": {"set": s}}]
    if elements:
        out.append({"add": {"element": {"family": FAMILY, "table": TABLE, "name": name, "elem": elements}}})
    return out


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _payload(proto: str, field_: str) -> Json:
    return {"payload": {"protocol": proto, "field": field_}}


def _prefix(net: Any) -> Json:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


ACCEPT: Json = {"accept": None}
DROP: Json = {"drop": None}
COUNTER: Json = {"counter": {"packets": 0, "bytes": 0}}
ESTABLISHED = _match({"ct": {"key": "state"}}, ["established", "related"], "in")


def render_ruleset(config: Config) -> Json:
    """The whole `inet dvpn` table for this node, as one libnftables JSON batch."""
    wg = config.wireguard.interface
    fw = config.firewall
    cmds: list[Json] = [
        {"metainfo": {"json_schema_version": 1}},
        {"add": {"table": table_ref()}},
        {"delete": {"table": table_ref()}},
        {"add": {"table": table_ref()}},
    ]
    iif_wg = _match(_meta("iifname"), wg)
    oif_wg = _match(_meta("oifname"), wg)
    head = [
        _rule("input", _match(_meta("iif"), "lo"), ACCEPT),
    ]
    if fw.trusted_interfaces:
        cmds += _set("trusted_ifs", "ifname", list(fw.trusted_interfaces), interval=True)
        head.append(_rule("input", _match(_meta("iifname"), "@trusted_ifs"), ACCEPT,
                          comment="trusted interfaces"))
    cmds += _set("public_tcp", "inet_service", list(fw.public_tcp_ports))
    cmds += _set("public_udp", "inet_service", list(fw.public_udp_ports))
    public = [
        _rule("input", _match(_payload("tcp", "dport"), "@public_tcp"), ACCEPT),
        _rule("input", _match(_payload("udp", "dport"), "@public_udp"), ACCEPT),
    ]
    if config.is_hub:
        cmds += [_chain("input", "input"), _chain("forward", "forward"), _chain("output", "output")]
        cmds += head
        cmds += [_rule("input", ESTABLISHED, ACCEPT)]
        if config.wireguard.listen_port:
            cmds.append(_rule("input", _match(_payload("udp", "dport"), config.wireguard.listen_port),
                              ACCEPT, comment="wireguard"))
        if config.relay.enabled:
            cmds += _hub_relay(config)
        cmds += public
        if config.confidential:
            cmds += _hub_confidential(config, iif_wg, oif_wg)
        else:
            cmds += _set("spokes", "ipv4_addr", sorted(str(p.address) for p in config.peers))
            cmds.append(_rule("input", COUNTER, DROP))
            cmds += [
                _rule("forward", iif_wg, oif_wg, _match(_payload("ip", "saddr"), "@spokes"),
                      _match(_payload("ip", "daddr"), "@spokes"), ACCEPT, comment="spoke to spoke"),
                _rule("forward", iif_wg, COUNTER, DROP),
                _rule("forward", oif_wg, COUNTER, DROP),
                _rule("forward", _match(_payload("ip", "daddr"), _prefix(config.network)), COUNTER, DROP),
                _rule("output", oif_wg, COUNTER, DROP, comment="the hub originates nothing into the overlay"),
                _fail_closed(config.network, wg),
            ]
    else:
        overlay_src = _match(_payload("ip", "saddr"), _prefix(config.network))
        cmds += [_chain("input", "input"), _chain("forward", "forward"), _chain("output", "output")]
        cmds += head[:1]
        if config.confidential:
            cmds += _spoke_transit_input(config)
        cmds.append(_rule("input", iif_wg, _match(_payload("ip", "saddr"), str(config.hub_address)), COUNTER, DROP,
                          comment="nothing from the hub"))
        cmds += head[1:]
        cmds.append(_rule("input", ESTABLISHED, ACCEPT))
        if fw.overlay_tcp_ports is None:
            cmds.append(_rule("input", iif_wg, overlay_src, ACCEPT, comment="other spokes"))
        else:
            ports = list(fw.overlay_tcp_ports)
            if config.postgres.enabled and config.postgres.port not in ports:
                ports.append(config.postgres.port)  # the database is what the overlay is for
            cmds += _set("overlay_tcp", "inet_service", ports)
            cmds.append(_rule("input", iif_wg, overlay_src, _match(_payload("tcp", "dport"), "@overlay_tcp"),
                              ACCEPT, comment="other spokes, listed ports"))
            cmds.append(_rule("input", iif_wg, overlay_src,
                              _match(_payload("icmp", "type"), "echo-request"), ACCEPT))
        if config.status.enabled:
            cmds.append(_rule("input", _match(_payload("tcp", "dport"), config.status.port), ACCEPT,
                              comment="status page"))
        cmds += public
        cmds.append(_rule("input", COUNTER, DROP))
        cmds += [_rule("forward", iif_wg, COUNTER, DROP), _rule("forward", oif_wg, COUNTER, DROP)]
        cmds.append(_fail_closed(config.network, wg))
        if config.confidential:
            tif = config.overlay.transit_interface
            cmds += [_rule("forward", _match(_meta("iifname"), tif), COUNTER, DROP),
                     _rule("forward", _match(_meta("oifname"), tif), COUNTER, DROP)]
            cmds += [_fail_closed(net, tif) for net in config.transit_networks]
    return {"nftables": cmds}


def _fail_closed(net: Any, ifname: str) -> Json:
    """Traffic for the overlay (or transit) prefix leaves by its interface or not at all: with the
    interface gone (wireguard-go killed), the route goes with it and the packet would otherwise
    take the default route, in clear. The node's own address is reached over lo, which stays
    open (an application talking to its own overlay address)."""
    return _rule("output", _match(_payload("ip", "daddr"), _prefix(net)),
                 _match(_meta("oifname"), {"set": [ifname, "lo"]}, "!="), COUNTER, DROP, comment="fail closed")


def _hub_confidential(config: Config, iif_wg: Json, oif_wg: Json) -> list[Json]:
    """The blind relay: between transit addresses, the overlay's WireGuard UDP and nothing else;
    the roster for the spokes that ask; nothing originated."""
    ov = config.overlay
    transit = _prefix(ov.transit_network)
    from_transit = _match(_payload("ip", "saddr"), transit)
    return [
        _rule("input", iif_wg, from_transit, _match(_payload("tcp", "dport"), ov.port), ACCEPT,
              comment="the roster, for spokes"),
        _rule("input", COUNTER, DROP),
        _rule("forward", iif_wg, oif_wg, from_transit, _match(_payload("ip", "daddr"), transit),
              _match(_payload("udp", "sport"), ov.port), _match(_payload("udp", "dport"), ov.port), ACCEPT,
              comment="overlay WireGuard between spokes (ciphertext)"),
        _rule("forward", iif_wg, oif_wg, from_transit, _match(_payload("ip", "daddr"), transit),
              _match(_payload("icmp", "type"), {"set": ["echo-request", "echo-reply"]}, "=="),
              _match(_payload("ip", "length"), 128, "<="), ACCEPT,
              comment="spokes' probes of this hub's forwarding (small echoes)"),
        _rule("forward", iif_wg, COUNTER, DROP),
        _rule("forward", oif_wg, COUNTER, DROP),
        _rule("forward", _match(_payload("ip", "daddr"), transit), COUNTER, DROP),
        _rule("forward", _match(_payload("ip", "daddr"), _prefix(config.network)), COUNTER, DROP),
        _rule("output", oif_wg, ESTABLISHED, ACCEPT, comment="answers to roster requests"),
        _rule("output", oif_wg, COUNTER, DROP, comment="the hub originates nothing"),
        _fail_closed(ov.transit_network, config.wireguard.interface),
    ]


def _hub_relay(config: Config) -> list[Json]:
    """The TCP fallback: the relay's TLS port, and the UDP probes of spokes on transport: auto.
    A probe goes to WireGuard's own port (so that it says whether that port is reachable) with a
    first byte that is no WireGuard type (0xff); it is redirected to the relay, which answers
    only a valid MAC of a spoke it carries. Only redirected datagrams reach the probe port."""
    r = config.relay
    wg_port = config.wireguard.listen_port
    return [
        _rule("input", _match(_payload("tcp", "dport"), r.port), ACCEPT,
              comment="the TCP fallback (dvpn-relay: WireGuard over WebSocket)"),
        {"add": {"chain": {"family": FAMILY, "table": TABLE, "name": "prerouting", "type": "nat",
                           "hook": "prerouting", "prio": -100, "policy": "accept"}}},
        _rule("prerouting", _match(_payload("udp", "dport"), wg_port),
              _match({"payload": {"base": "th", "offset": 64, "len": 8}}, 0xFF),
              {"redirect": {"port": r.probe_port}}, comment="UDP probes of spokes on transport auto"),
        _rule("input", _match(_payload("udp", "dport"), r.probe_port),
              _match({"ct": {"key": "status"}}, "dnat", "in"), ACCEPT, comment="the probes, redirected"),
    ]


def _spoke_transit_input(config: Config) -> list[Json]:
    """A spoke's transit address carries the overlay's WireGuard UDP and answers to its own roster
    requests, nothing else: an application bound to 0.0.0.0 does not answer the hub there."""
    ov = config.overlay
    iif_t = _match(_meta("iifname"), ov.transit_interface)
    nets = [_prefix(n) for n in config.transit_networks]
    from_transit = _match(_payload("ip", "saddr"), nets[0] if len(nets) == 1 else {"set": nets})
    hub_addrs = sorted(str(config.transit_address_via(h, config.hub_address)) for h in config.hubs) or [
        str(config.hub_transit_address)]
    out = [
        _rule("input", iif_t, from_transit, _match(_payload("udp", "dport"), ov.port), ACCEPT,
              comment="overlay WireGuard"),
        _rule("input", iif_t, _match(_payload("ip", "saddr"), hub_addrs[0] if len(hub_addrs) == 1 else
                                     {"set": hub_addrs}),
              _match(_payload("tcp", "sport"), ov.port), ESTABLISHED, ACCEPT, comment="the roster's answers"),
    ]
    # every confidential spoke answers the probes of the spokes that use several hubs
    out += [
        _rule("input", iif_t, from_transit, _match(_payload("icmp", "type"), "echo-request"),
              {"limit": {"rate": 200, "per": "second", "burst": 50}}, ACCEPT,
              comment="other spokes' probes of the hubs"),
        _rule("input", iif_t, from_transit, _match(_payload("icmp", "type"), "echo-reply"), ESTABLISHED,
              ACCEPT, comment="answers to this spoke's probes"),
    ]
    return out + [_rule("input", iif_t, COUNTER, DROP, comment="nothing else on the transit")]


def count_rules(batch: Json) -> int:
    return sum(1 for c in batch["nftables"] if "add" in c and "rule" in c["add"])


def render_removal() -> Json:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}},
                         {"add": {"table": table_ref()}}, {"delete": {"table": table_ref()}}]}


def normalize_listing(listing: Json) -> Any:
    """The parts of `list table` output that define the policy: no handles, no counter values."""
    out = []
    for item in listing.get("nftables", []):
        for kind in ("table", "chain", "rule", "set"):
            if kind in item:
                obj = {k: v for k, v in item[kind].items() if k != "handle"}
                if kind == "rule":
                    obj["expr"] = [{"counter": None} if "counter" in e else e for e in obj.get("expr", [])]
                out.append({kind: obj})
    return json.loads(json.dumps(out, sort_keys=True))
