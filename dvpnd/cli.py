"""dvpnctl: the operator's tool. Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from dvpnd.config import DEFAULT_CONFIG, Config, load_config
from dvpnd.errors import EXIT_BAD_INPUT, EXIT_FAILURE, ConfigError, DvpnError


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path(os.environ.get("DVPN_CONFIG", DEFAULT_CONFIG)),
                   help="the node's dvpnd.yaml (default $DVPN_CONFIG or /etc/dvpn/dvpnd.yaml)")


def _load(path: Path) -> Config:
    return load_config(path)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    extra = f", {len(config.peers)} peers" if config.is_hub else f", hub {config.hub.endpoint if config.hub else '?'}"
    print(f"{args.config}: ok ({config.role} {config.name}, {config.address} in {config.network}{extra})")
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    from dvpnd.keys import encode_key, load_or_create_private_key, public_key

    config = _load(args.config)
    # Like the daemon's first start: the key is created on this node if it does not exist yet.
    raw, _created = load_or_create_private_key(config.wireguard.private_key_file)
    print(encode_key(public_key(raw)))
    return 0


def _request(args: argparse.Namespace, cmd: str) -> dict[str, Any]:
    from dvpnd import control

    config = _load(args.config)
    return control.request(config.control_socket, cmd)


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


def cmd_status(args: argparse.Namespace) -> int:
    reply = _request(args, "status")
    st = reply["status"]
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(format_peer_table(st))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    reply = _request(args, "reload")
    if reply.get("ok"):
        print("reloaded")
        return 0
    for p in reply.get("problems", []):
        print(p, file=sys.stderr)
    return EXIT_BAD_INPUT if any(": " in p for p in reply.get("problems", [])) else EXIT_FAILURE


def cmd_down(args: argparse.Namespace) -> int:
    reply = _request(args, "down")
    if not reply.get("ok"):
        for p in reply.get("problems", []):
            print(p, file=sys.stderr)
        return EXIT_FAILURE
    print("interface and firewall table removed; dvpnd stopped")
    return 0


def cmd_firewall_show(args: argparse.Namespace) -> int:
    reply = _request(args, "firewall")
    if not reply.get("ok") or not reply.get("table"):
        print("no dvpn table is loaded", file=sys.stderr)
        return EXIT_FAILURE
    print(reply["table"], end="")
    return 0


def cmd_firewall_apply(args: argparse.Namespace) -> int:
    reply = _request(args, "firewall-apply")
    if not reply.get("ok"):
        for p in reply.get("problems", []):
            print(p, file=sys.stderr)
        return EXIT_FAILURE
    print("firewall applied")
    return 0


def cmd_lab_up(args: argparse.Namespace) -> int:
    from dvpnd import lab

    t0 = time.monotonic()
    nodes = lab.up(spokes=args.spokes, backend=args.backend)
    print(f"lab up in {time.monotonic() - t0:.1f}s ({args.spokes} spokes, {args.backend} backend)\n")
    print(lab.format_status(lab.status()))
    print("\nspoke to spoke through the hub (overlay ping):")
    ok = True
    for a, b, passed, summary in lab.ping_matrix(nodes):
        ok &= passed
        print(f"  {a} -> {b}: {'ok' if passed else 'FAILED'}  {summary}")
    return 0 if ok else EXIT_FAILURE


def cmd_lab_status(args: argparse.Namespace) -> int:
    from dvpnd import lab

    entries = lab.status()
    if args.json:
        print(json.dumps({"nodes": entries}, indent=2))
    elif not entries:
        print("no lab is up")
    else:
        print(lab.format_status(entries))
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    from dvpnd import lab

    for line in lab.down():
        print(line)
    return 0


def cmd_lab_exec(args: argparse.Namespace) -> int:
    from dvpnd import lab

    argv = args.argv[1:] if args.argv and args.argv[0] == "--" else args.argv
    return lab.exec_in(args.node, argv)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dvpnctl", description="control and inspect dvpnd")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a config; exit 2 on problems")
    _config_arg(p)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("pubkey", help="print this node's public key (creating its key if missing)")
    _config_arg(p)
    p.set_defaults(func=cmd_pubkey)
    p = sub.add_parser("status", help="the node and its peers")
    _config_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("reload", help="re-read the config (like SIGHUP)")
    _config_arg(p)
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser("down", help="remove the interface and firewall table; dvpnd exits")
    _config_arg(p)
    p.set_defaults(func=cmd_down)
    fw = sub.add_parser("firewall", help="the nftables table").add_subparsers(dest="fw", required=True)
    p = fw.add_parser("show", help="print the live inet dvpn table")
    _config_arg(p)
    p.set_defaults(func=cmd_firewall_show)
    p = fw.add_parser("apply", help="re-apply the table now (one atomic transaction)")
    _config_arg(p)
    p.set_defaults(func=cmd_firewall_apply)

    lab = sub.add_parser("lab", help="a local lab in network namespaces").add_subparsers(dest="lab", required=True)
    p = lab.add_parser("up", help="build (or repair) the lab and show it working")
    p.add_argument("--spokes", type=int, default=3)
    p.add_argument("--backend", choices=("auto", "kernel", "userspace"), default="auto")
    p.set_defaults(func=cmd_lab_up)
    p = lab.add_parser("status", help="list the lab's nodes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lab_status)
    p = lab.add_parser("down", help="remove everything the lab made")
    p.set_defaults(func=cmd_lab_down)
    p = lab.add_parser("exec", help="run a command inside a node: lab exec NODE -- CMD...")
    p.add_argument("node")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_lab_exec)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return EXIT_BAD_INPUT
    except DvpnError as e:
        print(f"dvpnctl: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:  # `dvpnctl ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
