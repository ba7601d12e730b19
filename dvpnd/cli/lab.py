"""dvpnctl lab: the namespace lab."""

from __future__ import annotations

import argparse
import json
import time

from dvpnd.errors import EXIT_FAILURE


def cmd_lab_up(args: argparse.Namespace) -> int:
    from dvpnd.lab import cluster as lab
    from dvpnd.lab import report

    t0 = time.monotonic()
    nodes = lab.up(spokes=args.spokes, backend=args.backend, postgres=args.postgres, mode=args.mode, hubs=args.hubs)
    mode = (lab.load_lab() or ([], {}))[1].get("mode", "?")
    hubs = f", {args.hubs} hubs" if args.hubs > 1 else ""
    print(f"lab up in {time.monotonic() - t0:.1f}s ({args.spokes} spokes{hubs}, {mode}, {args.backend} backend"
          f"{', PostgreSQL' if args.postgres else ''})\n")
    print(report.format_status(report.status()))
    print("\nspoke to spoke through the hub (overlay ping):")
    ok = True
    for a, b, passed, summary in report.ping_matrix(nodes):
        ok &= passed
        print(f"  {a} -> {b}: {'ok' if passed else 'FAILED'}  {summary}")
    if args.postgres:
        from dvpnd.lab import pg as labpg

        print("\nPostgreSQL over the overlay:")
        for line in labpg.demo(nodes):
            ok &= "NOT" not in line
            print(f"  {line}")
    return 0 if ok else EXIT_FAILURE


def cmd_lab_status(args: argparse.Namespace) -> int:
    from dvpnd.lab import report

    entries = report.status()
    if args.json:
        print(json.dumps({"nodes": entries}, indent=2))
    elif not entries:
        print("no lab is up")
    else:
        print(report.format_status(entries))
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    from dvpnd.lab import cluster as lab

    for line in lab.down():
        print(line)
    return 0


def cmd_lab_exec(args: argparse.Namespace) -> int:
    from dvpnd.lab import cluster as lab

    argv = args.argv[1:] if args.argv and args.argv[0] == "--" else args.argv
    return lab.exec_in(args.node, argv)


def cmd_lab_block_udp(args: argparse.Namespace) -> int:
    from dvpnd.lab import cluster as lab

    lab.block_udp(lab.find_node(args.node), on=not args.off)
    print(f"the lab's router {'passes' if args.off else 'drops'} UDP to and from {args.node}")
    return 0


def cmd_lab_transport(args: argparse.Namespace) -> int:
    from dvpnd.lab import cluster as lab

    node = lab.find_node(args.node)
    if node.role != "spoke":
        print(f"{args.node} is not a spoke")
        return EXIT_FAILURE
    lab.set_transport(node, args.transport)
    print(f"{args.node}: its tunnels to the hubs go over {args.transport}")
    return 0
