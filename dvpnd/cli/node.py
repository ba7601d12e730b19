"""dvpnctl's node commands: check, pubkey, status, reload, down, firewall."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from dvpnd.cli.common import load, request
from dvpnd.cli.db import format_db
from dvpnd.errors import EXIT_BAD_INPUT, EXIT_FAILURE


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args.config)
    extra = f", {len(config.peers)} peers" if config.is_hub else f", hub {config.hub.endpoint if config.hub else '?'}"
    print(f"{args.config}: ok ({config.role} {config.name}, {config.address} in {config.network}{extra})")
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    from dvpnd.wireguard.keys import encode_key, load_or_create_private_key, public_key

    config = load(args.config)
    path = config.wireguard.private_key_file
    if getattr(args, "overlay", False):
        if not config.confidential or config.is_hub:
            print(f"dvpnctl: {args.config}: only a spoke in overlay.mode: confidential has an overlay key",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        path = config.overlay.private_key_file
    # Like the daemon's first start: the key is created on this node if it does not exist yet.
    raw, _created = load_or_create_private_key(path)
    print(encode_key(public_key(raw)))
    return 0


def cmd_relay_fingerprint(args: argparse.Namespace) -> int:
    from dvpnd.relay.plan import cert_paths
    from dvpnd.relay.tls import cert_fingerprint, ensure_self_signed

    config = load(args.config)
    if not config.is_hub:
        print(f"dvpnctl: {args.config}: only a hub has a relay certificate", file=sys.stderr)
        return EXIT_BAD_INPUT
    cert, key = cert_paths(config)
    if config.relay.cert is None:
        ensure_self_signed(cert, key, config.name)  # as dvpnd would at its first pass with relay.enabled
    print(f"sha256:{cert_fingerprint(cert)}")
    return 0


def format_peer_table(st: dict[str, Any]) -> str:
    lines = [f"{st['node']}: {st['role']} {st['interface']} {st['overlay_ip']} ({st['backend']}), "
             f"state {st['state']}" + (f", error: {st['reconcile_error']}" if st.get("reconcile_error") else "")]
    fw = st.get("firewall", {})
    lines.append(f"firewall: {'applied' if fw.get('applied') else 'not applied'}"
                 + (f" (error: {fw['error']})" if fw.get("error") else ""))
    lines.append(f"{'PEER':<14} {'OVERLAY':<13} {'ENDPOINT':<22} {'HANDSHAKE':>10} {'RX':>12} {'TX':>12}  STATE")
    for p in st.get("peers", []):
        age = "never" if p["handshake_age_sec"] is None else f"{p['handshake_age_sec']}s"
        lines.append(f"{p['name']:<14} {p['overlay_ip']:<13} {p['endpoint'] or '-':<22} {age:>10} "
                     f"{p['rx_bytes']:>12} {p['tx_bytes']:>12}  {p['state']}")
    return "\n".join(lines)


def cmd_dns(args: argparse.Namespace) -> int:
    """What the node's resolver answers for, where the rest goes, and how it has answered."""
    d = request(args, "status")["status"].get("dns")
    if not d:
        print("dvpnctl: this node's resolver is off (dns.enabled)", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"zone {d['zone']} on {', '.join(d['listen'])}"
          + ("" if d["ready"] else " (no verified roster yet: SERVFAIL for the zone)"))
    if d.get("problem"):
        print(f"NOT ANSWERING: {d['problem']}")
    for name, address in d["names"]:
        print(f"  {name:<40} {address}")
    print(f"other names: {', '.join(d['upstreams']) or 'nobody'} (from {d['upstreams_from']})")
    if d.get("system"):
        print(f"this machine: {d['system']}")
    if d["answers"]:
        print("answers: " + ", ".join(f"{k} {v}" for k, v in d["answers"].items()))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    reply = request(args, "status")
    st = reply["status"]
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(format_peer_table(st))
        if hubs := format_hubs(st):
            print(hubs)
        if relay := format_relay(st):
            print(relay)
        if db := format_db(st):
            print(db)
        for p in st.get("problems", []):
            print(f"problem: {p}")
    return 0


def format_relay(st: dict[str, Any]) -> str:
    """The TCP fallback: a spoke's hubs reached over TCP, a hub's relay."""
    lines = []
    for t in st.get("transports") or []:
        if t["transport"] != "tcp":
            continue
        state = "relay not running" if t["connected"] is None else "connected" if t["connected"] else "NOT connected"
        since = f" since {time.strftime('%H:%M:%S', time.localtime(t['since']))}" if t.get("since") else ""
        err = f" ({t['last_error']})" if t.get("last_error") and not t["connected"] else ""
        lines.append(f"hub {t['hub']:<12} over TCP: {state}{since}, {t['connects']} connects{err}")
    r = st.get("relay")
    if r:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(r["refused"].items())) or "none"
        lines.append(f"relay: {'running' if r['running'] else 'NOT running'}, {r['spokes']} spokes over TCP, "
                     f"{r['connections']} connections; refused: {refused}")
    return "\n".join(lines)


def format_hubs(st: dict[str, Any]) -> str:
    """A spoke's hubs (more than one): up or down by the probes, and the one in use."""
    lines = []
    for h in st.get("hubs") or []:
        age = "-" if h["last_answer_age"] is None else f"{h['last_answer_age']}s ago"
        lines.append(f"hub {h['name']:<12} {'up' if h['up'] else 'DOWN':<5} {'in use' if h['in_use'] else '':<7}"
                     f"probes {h['answers']}/{h['probes']} answered, last {age}")
    if lines:
        lines.append(f"failovers: {st.get('failovers', 0)}")
    return "\n".join(lines)


def _simple(args: argparse.Namespace, cmd: str, done: str) -> int:
    """Send one command; print `done`, or the daemon's problems (exit 2 if the input was at fault)."""
    reply = request(args, cmd)
    if reply.get("ok"):
        print(done)
        return 0
    for p in reply.get("problems", []):
        print(p, file=sys.stderr)
    return EXIT_BAD_INPUT if reply.get("bad_input") else EXIT_FAILURE


def cmd_reload(args: argparse.Namespace) -> int:
    return _simple(args, "reload", "reloaded")


def cmd_down(args: argparse.Namespace) -> int:
    return _simple(args, "down", "interface and firewall table removed; dvpnd stopped")


def cmd_firewall_show(args: argparse.Namespace) -> int:
    reply = request(args, "firewall")
    if not reply.get("ok") or not reply.get("table"):
        print("no dvpn table is loaded", file=sys.stderr)
        return EXIT_FAILURE
    print(reply["table"], end="")
    return 0


def cmd_firewall_apply(args: argparse.Namespace) -> int:
    return _simple(args, "firewall-apply", "firewall applied")
