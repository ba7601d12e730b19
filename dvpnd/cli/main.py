"""dvpnctl: the operator's tool. Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import argparse
import os
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from dvpnd.cli.common import BadInput, config_arg
from dvpnd.cli.db import (
    cmd_backup_now,
    cmd_backup_restore,
    cmd_backup_status,
    cmd_pg_follow,
    cmd_pg_init_replica,
    cmd_pg_password,
    cmd_pg_promote,
    cmd_pg_setup,
    cmd_pg_status,
)
from dvpnd.cli.lab import (
    cmd_lab_block_udp,
    cmd_lab_down,
    cmd_lab_exec,
    cmd_lab_status,
    cmd_lab_transport,
    cmd_lab_up,
)
from dvpnd.cli.node import (
    cmd_check,
    cmd_dns,
    cmd_down,
    cmd_firewall_apply,
    cmd_firewall_show,
    cmd_pubkey,
    cmd_relay_fingerprint,
    cmd_reload,
    cmd_status,
)
from dvpnd.cli.peers import (
    cmd_hub_add,
    cmd_hub_remove,
    cmd_rotate_key,
    cmd_spoke_add,
    cmd_spoke_remove,
    cmd_spoke_rotate,
)
from dvpnd.cli.roster import add_arguments as add_roster_arguments
from dvpnd.config.peers import RunbookInputError
from dvpnd.errors import EXIT_BAD_INPUT, EXIT_FAILURE, ConfigError, DvpnError


def _command(sub: Any, name: str, func: Any, help: str) -> argparse.ArgumentParser:
    """A subcommand that acts on a node's config (--config)."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help)
    config_arg(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dvpnctl", description="control and inspect dvpnd")
    sub = ap.add_subparsers(dest="command", required=True)

    p = _command(sub, "check", cmd_check, "validate a config; exit 2 on problems")
    p = _command(sub, "pubkey", cmd_pubkey, "print this node's public key (creating its key if missing)")
    p.add_argument("--overlay", action="store_true",
                   help="confidential spokes: the overlay's key instead (the one the hub never sees)")
    relay = sub.add_parser("relay", help="the TCP fallback's relay").add_subparsers(dest="relay", required=True)
    _command(relay, "fingerprint", cmd_relay_fingerprint,
             "a hub: print its relay certificate's SHA-256, which spokes pin (relay_fingerprint); "
             "makes the self-signed certificate if it does not exist yet")
    p = _command(sub, "dns", cmd_dns, "the names this node's resolver answers for (the roster's), and the rest")
    p.add_argument("--json", action="store_true")
    p = _command(sub, "status", cmd_status, "the node and its peers")
    p.add_argument("--json", action="store_true")
    p = _command(sub, "reload", cmd_reload, "re-read the config (like SIGHUP)")
    p = _command(sub, "down", cmd_down, "remove the interface and firewall table; dvpnd exits")
    fw = sub.add_parser("firewall", help="the nftables table").add_subparsers(dest="fw", required=True)
    p = _command(fw, "show", cmd_firewall_show, "print the live inet dvpn table")
    p = _command(fw, "apply", cmd_firewall_apply, "re-apply the table now (one atomic transaction)")

    spoke = sub.add_parser("spoke", help="runbooks on the hub").add_subparsers(dest="spoke", required=True)
    p = _command(spoke, "add", cmd_spoke_add, "add a spoke (writes peers.d/NAME.yaml, reloads, prints its config)")
    p.add_argument("name")
    p.add_argument("--pubkey", required=True, help="the spoke's public key (dvpnctl pubkey on the spoke)")
    p.add_argument("--address", type=IPv4Address, help="its overlay address (default: the next free one)")
    p = _command(spoke, "remove", cmd_spoke_remove, "remove a spoke (deletes peers.d/NAME.yaml, reloads)")
    p.add_argument("name")
    p = _command(spoke, "rotate", cmd_spoke_rotate, "accept a spoke's new key alongside its old one")
    p.add_argument("name")
    p.add_argument("--pubkey", required=True, help="the new public key (printed by dvpnctl rotate-key)")
    hubp = sub.add_parser("hub", help="runbooks on a spoke: its hubs (confidential mode)").add_subparsers(
        dest="hub", required=True)
    p = _command(hubp, "add", cmd_hub_add, "add a hub to this spoke's hubs (checked; then restart dvpnd)")
    p.add_argument("name")
    p.add_argument("--public-key", required=True, help="the hub's public key (provision-hub prints it)")
    p.add_argument("--endpoint", required=True, help="HOST:PORT")
    p.add_argument("--transit-network", help="the hub's overlay.transit_network (required after the first hub)")
    p.add_argument("--first", action="store_true", help="make it the preferred hub")
    p = _command(hubp, "remove", cmd_hub_remove, "remove a hub from this spoke's hubs (then restart dvpnd)")
    p.add_argument("name")
    p = _command(sub, "rotate-key", cmd_rotate_key, "on a spoke: make a new key (then --commit once the hub has it)")
    p.add_argument("--commit", action="store_true", help="switch to the new key")

    pgp = sub.add_parser("pg", help="the spoke's PostgreSQL server").add_subparsers(dest="pg", required=True)
    p = _command(pgp, "setup", cmd_pg_setup,
                 "initdb on the primary if empty; write dvpn.conf, hba, ident; replication role")
    p = _command(pgp, "password", cmd_pg_password, "make the replication password file if missing")
    p = _command(pgp, "init-replica", cmd_pg_init_replica,
                 "copy the primary over the overlay into an empty data directory")
    p.add_argument("--primary", type=IPv4Address, help="the primary's overlay address (default postgres.primary)")
    p = _command(pgp, "promote", cmd_pg_promote, "make this replica the primary (manual failover)")
    p = _command(pgp, "follow", cmd_pg_follow, "re-point this replica at a new primary")
    p.add_argument("primary", type=IPv4Address, help="the new primary's overlay address")
    p = _command(pgp, "status", cmd_pg_status, "role, replicas, lag, slots and backups as dvpnd sees them")
    p.add_argument("--json", action="store_true")

    bk = sub.add_parser("backup", help="pgBackRest's backups, local and offsite").add_subparsers(
        dest="backup", required=True)
    p = _command(bk, "now", cmd_backup_now, "take a backup now (through dvpnd, on the primary) and wait for it")
    p = _command(bk, "status", cmd_backup_status, "both repositories, WAL archiving, drills and problems")
    p.add_argument("--json", action="store_true")
    p = _command(bk, "restore", cmd_backup_restore,
                 "restore to a point in time, or the latest archived WAL, into a new or empty directory")
    p.add_argument("--to", dest="when", default="latest", metavar="TIME|latest",
                   help="a moment with its zone ('2026-11-26 13:05:00+00') or latest (the default)")
    p.add_argument("--target", type=Path, required=True, help="a new or empty directory")
    p.add_argument("--from", dest="source", choices=("local", "offsite"), default="local",
                   help="the repository to restore from (default: local)")
    p.add_argument("--force", action="store_true",
                   help="restore over a directory that holds files, or over the live data directory once its "
                        "server is stopped (never under a running server)")

    add_roster_arguments(sub)

    lab = sub.add_parser("lab", help="a local lab in network namespaces").add_subparsers(dest="lab", required=True)
    p = lab.add_parser("up", help="build (or repair) the lab and show it working")
    p.add_argument("--spokes", type=int, default=3)
    p.add_argument("--backend", choices=("auto", "kernel", "userspace"), default="auto")
    p.add_argument("--mode", choices=("confidential", "routed"),
                   help="confidential: end-to-end between spokes, the hub a blind relay (the default for a "
                        "new lab); routed: the seed's hub-terminated design. A running lab keeps its mode")
    p.add_argument("--postgres", action="store_true",
                   help="PostgreSQL 15 on the spokes: spoke-a primary, the others streaming replicas")
    p.add_argument("--hubs", type=int, choices=(1, 2), default=1,
                   help="2: a second hub (hub-b); every spoke keeps a tunnel to both and fails over "
                        "(confidential mode)")
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
    p = lab.add_parser("block-udp", help="the lab's router drops a node's UDP (a network that passes TCP only)")
    p.add_argument("node")
    p.add_argument("--off", action="store_true", help="pass its UDP again")
    p.set_defaults(func=cmd_lab_block_udp)
    p = lab.add_parser("transport", help="carry a spoke's tunnels over tcp (the hubs' relay on TCP 443), udp, "
                                         "or auto (tcp while UDP fails)")
    p.add_argument("node")
    p.add_argument("transport", choices=("auto", "tcp", "udp"))
    p.set_defaults(func=cmd_lab_transport)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return EXIT_BAD_INPUT
    except (BadInput, RunbookInputError) as e:
        print(f"dvpnctl: {e}", file=sys.stderr)
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
