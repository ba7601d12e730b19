"""dvpnctl: the operator's tool. Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from dvpnd.config.load import load_config
from dvpnd.config.model import DEFAULT_CONFIG, Config
from dvpnd.config.peers import RunbookInputError
from dvpnd.errors import EXIT_BAD_INPUT, EXIT_FAILURE, ConfigError, DvpnError


class BadInput(DvpnError):
    """The command line asks for something impossible: exit 2."""


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
    from dvpnd.wireguard.keys import encode_key, load_or_create_private_key, public_key

    config = _load(args.config)
    # Like the daemon's first start: the key is created on this node if it does not exist yet.
    raw, _created = load_or_create_private_key(config.wireguard.private_key_file)
    print(encode_key(public_key(raw)))
    return 0


def _request(args: argparse.Namespace, cmd: str) -> dict[str, Any]:
    from dvpnd.serve import control

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
        if db := format_db(st):
            print(db)
        for p in st.get("problems", []):
            print(f"problem: {p}")
    return 0


def _simple(args: argparse.Namespace, cmd: str, done: str) -> int:
    """Send one command; print `done`, or the daemon's problems (exit 2 if the input was at fault)."""
    reply = _request(args, cmd)
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
    reply = _request(args, "firewall")
    if not reply.get("ok") or not reply.get("table"):
        print("no dvpn table is loaded", file=sys.stderr)
        return EXIT_FAILURE
    print(reply["table"], end="")
    return 0


def cmd_firewall_apply(args: argparse.Namespace) -> int:
    return _simple(args, "firewall-apply", "firewall applied")


def _write_yaml(path: Path, doc: dict[str, Any]) -> None:
    import yaml

    from dvpnd.util.fsutil import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode())


def _reload_or_undo(args: argparse.Namespace, undo: Any) -> None:
    """Ask the daemon to reload; if it refuses or does not answer, put the peers.d file back as
    it was (the daemon keeps its previous configuration when it refuses one)."""
    try:
        reply = _request(args, "reload")
    except DvpnError as e:
        undo()
        raise DvpnError(f"{e}; the change was undone (start dvpnd, then run this again)") from None
    if not reply.get("ok"):
        undo()
        raise DvpnError("dvpnd refused the change, which was undone: " + "; ".join(reply.get("problems", [])))


def _restore(path: Path, old: bytes | None) -> Any:
    def undo() -> None:
        from dvpnd.util.fsutil import write_atomic

        if old is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, old)
    return undo


def cmd_spoke_add(args: argparse.Namespace) -> int:
    import yaml

    from dvpnd.config import peers as runbook
    from dvpnd.config.fields import check_name
    from dvpnd.wireguard.keys import encode_key, load_or_create_private_key, public_key

    config = _load(args.config)
    if problem := check_name(args.name):
        raise BadInput(f"NAME {problem}")
    address = runbook.check_new_spoke(config, args.name, args.pubkey, args.address)
    path = config.peers_dir / f"{args.name}.yaml"
    if path.exists():
        raise BadInput(f"{path} exists already")
    _write_yaml(path, runbook.render_peer_file(args.name, args.pubkey, address))
    _reload_or_undo(args, _restore(path, None))
    raw, _ = load_or_create_private_key(config.wireguard.private_key_file)
    print(f"# added spoke {args.name} ({address}) in {path}; its /etc/dvpn/dvpnd.yaml:")
    print(yaml.safe_dump(runbook.render_spoke_config(config, encode_key(public_key(raw)), args.name, address),
                         sort_keys=False), end="")
    return 0


def cmd_spoke_remove(args: argparse.Namespace) -> int:
    from dvpnd.config import peers as runbook

    config = _load(args.config)
    path = runbook.peer_file_of(config, args.name)
    old = path.read_bytes()
    path.unlink()
    _reload_or_undo(args, _restore(path, old))
    print(f"removed spoke {args.name} ({path})")
    return 0


def cmd_spoke_rotate(args: argparse.Namespace) -> int:
    from dvpnd.config import peers as runbook
    from dvpnd.wireguard.keys import decode_key

    config = _load(args.config)
    try:
        decode_key(args.pubkey)
    except ValueError as e:
        raise BadInput(f"--pubkey {e}") from None
    spoke = runbook.find_spoke(config, args.name)
    if args.pubkey == spoke.public_key:
        raise BadInput(f"spoke {args.name!r} already uses that key")
    path = runbook.peer_file_of(config, args.name)
    old = path.read_bytes()
    _write_yaml(path, runbook.render_peer_file(spoke.name, spoke.public_key, spoke.address, args.pubkey))
    _reload_or_undo(args, _restore(path, old))
    print(f"spoke {args.name} may now switch to its new key: run 'dvpnctl rotate-key --commit' on it;\n"
          "the hub moves its address to the new key at its first handshake and then drops the old key")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from dvpnd.util.fsutil import fsync_dir, write_atomic
    from dvpnd.wireguard.keys import encode_key, generate_private_key, load_or_create_private_key, public_key

    config = _load(args.config)
    if config.is_hub:
        raise BadInput("rotate-key runs on a spoke; a hub key change means reconfiguring every spoke")
    key_file = config.wireguard.private_key_file
    nxt = key_file.with_name(key_file.name + ".next")
    if not args.commit:
        if nxt.exists():
            raw, _ = load_or_create_private_key(nxt)
        else:
            raw = generate_private_key()
            write_atomic(nxt, (encode_key(raw) + "\n").encode(), mode=0o600)
        new_pub = encode_key(public_key(raw))
        print(new_pub)
        print("# the old key stays in use. On the hub run:\n"
              f"#   dvpnctl spoke rotate {config.name} --pubkey {new_pub}\n"
              "# then here: dvpnctl rotate-key --commit", file=sys.stderr)
        return 0
    if not nxt.exists():
        raise BadInput(f"{nxt} does not exist: run 'dvpnctl rotate-key' first")
    load_or_create_private_key(nxt)  # refuses a bad file before anything moves
    load_or_create_private_key(key_file)
    old = key_file.with_name(key_file.name + ".old")
    current, new = key_file.read_bytes(), nxt.read_bytes()
    # The key file is never missing: a copy of the old key first, then one atomic switch. A
    # crash anywhere leaves a key in place and the other beside it, and each step below is
    # undone in reverse if a later one fails (the daemon refusing, or not answering).
    undo: list[Callable[[], None]] = []
    try:
        write_atomic(old, current, mode=0o600)
        undo.append(lambda: old.unlink(missing_ok=True))
        write_atomic(key_file, new, mode=0o600)
        undo.append(lambda: write_atomic(key_file, current, mode=0o600))
        nxt.unlink()
        fsync_dir(nxt.parent)
        undo.append(lambda: write_atomic(nxt, new, mode=0o600))
        reply = _request(args, "rekey")
        if not reply.get("ok"):
            raise DvpnError("dvpnd could not use the new key: " + "; ".join(reply.get("problems", [])))
    except BaseException as e:
        for step in reversed(undo):
            step()
        try:
            _request(args, "rekey")  # back on the old key, if the daemon had taken the new one
        except DvpnError:
            pass
        if isinstance(e, DvpnError):
            raise DvpnError(f"{e}; the old key is back in {key_file}, the new one in {nxt}") from None
        raise
    old.unlink()  # no use once dvpnd runs on the new key: no old identity left on disk
    fsync_dir(old.parent)
    print("now using the new key (the old one is deleted)")
    return 0


# --- PostgreSQL and backups -------------------------------------------------------------

def _pg_config(args: argparse.Namespace) -> Config:
    config = _load(args.config)
    if not config.postgres.enabled:
        raise BadInput(f"{args.config}: no postgres section (this node has no database)")
    return config


def cmd_pg_setup(args: argparse.Namespace) -> int:
    from dvpnd.postgres import server as pg

    for line in pg.setup(_pg_config(args)):
        print(line)
    return 0


def cmd_pg_password(args: argparse.Namespace) -> int:
    from dvpnd.postgres import server as pg

    config = _pg_config(args)
    made = pg.make_password(config.postgres)
    print(f"{config.postgres.password_file}: {'created' if made else 'exists'} "
          "(copy the same file to every spoke, mode 0600)")
    return 0


def cmd_pg_init_replica(args: argparse.Namespace) -> int:
    from dvpnd.postgres import server as pg

    for line in pg.init_replica(_pg_config(args), args.primary):
        print(line)
    return 0


def cmd_pg_promote(args: argparse.Namespace) -> int:
    from dvpnd.postgres import server as pg

    config = _pg_config(args)
    print(pg.promote(config))
    print(f"now re-point the other replicas: run 'dvpnctl pg follow {config.address}' on each of them")
    return 0


def cmd_pg_follow(args: argparse.Namespace) -> int:
    from dvpnd.postgres import server as pg

    for line in pg.follow(_pg_config(args), args.primary):
        print(line)
    return 0


def format_db(st: dict[str, Any]) -> str:
    lines = []
    v = st.get("postgres")
    if v is not None:
        if not v["up"]:
            lines.append(f"postgres: down ({v.get('error')})")
        elif v["role"] == "primary":
            lines.append(f"postgres: primary, version {v['version']}, {len(v['replicas'])} replicas connected")
            for r in v["replicas"]:
                lag = "-" if r["replay_lag_sec"] is None else f"{r['replay_lag_sec']:.3f}s"
                lines.append(f"  replica {r['name']:<10} {r['client_addr'] or '-':<13} {r['state']:<10} "
                             f"lag {r['lag_bytes']} bytes, {lag}")
            for sl in v["slots"]:
                lines.append(f"  slot {sl['name']:<13} {'active' if sl['active'] else 'INACTIVE':<9}"
                             f" holds {sl['retained_bytes']} bytes of WAL")
        else:
            lines.append(f"postgres: replica of {v['upstream'] or '?'}, {v['receiver_status'] or 'not streaming'}, "
                         f"lag {v['lag_bytes']} bytes, {v['lag_sec']}s, version {v['version']}")
    b = st.get("backup")
    if b is not None:
        from dvpnd.postgres.backup import human

        if b["last_success"]:
            lines.append(f"backup: last {b['last_name']} ({b['age_sec']}s ago, {human(b['last_size_bytes'] or 0)}, "
                         f"{b['last_duration_sec']}s + {b['last_verify_sec']}s verify), {b['kept']} kept"
                         + (", OVERDUE" if b["overdue"] else ""))
        else:
            lines.append("backup: none yet" + (", OVERDUE" if b["overdue"] else ""))
        if b["running_since"]:
            lines.append(f"  running since {time.strftime('%H:%M:%S', time.localtime(b['running_since']))}"
                         f" (pid {b['running_pid']})")
        if b["last_error"]:
            lines.append(f"  last error: {b['last_error']}")
    return "\n".join(lines)


def cmd_pg_status(args: argparse.Namespace) -> int:
    st = _request(args, "status")["status"]
    if "postgres" not in st:
        raise BadInput("this node's dvpnd reports no database (no postgres section)")
    print(json.dumps({k: st[k] for k in ("postgres", "backup") if k in st}, indent=2) if args.json else format_db(st))
    return 0


def cmd_backup_now(args: argparse.Namespace) -> int:
    from dvpnd.postgres.backup import human
    from dvpnd.serve import control

    config = _pg_config(args)
    reply = control.request(config.control_socket, "backup-now", timeout=config.backup.timeout * 2 + 60)
    if not reply.get("ok"):
        for p in reply.get("problems", []):
            print(p, file=sys.stderr)
        return EXIT_BAD_INPUT if reply.get("bad_input") else EXIT_FAILURE
    b = reply["backup"]
    print(f"backup {b['name']}: {human(b['size_bytes'])} in {b['duration_sec']}s, verified in {b['verify_sec']}s")
    return 0


def cmd_backup_list(args: argparse.Namespace) -> int:
    from dvpnd.postgres import backup

    config = _pg_config(args)
    entries = backup.list_backups(config.backup.dir)
    if args.json:
        print(json.dumps([backup.entry_json(e) for e in entries], indent=2))
        return 0
    print(f"{'NAME':<17} {'FINISHED (UTC)':<20} {'SIZE':>10} {'UNPACKED':>10} {'TAKE':>7} {'VERIFY':>7}  FROM")
    for e in entries:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.finished))
        print(f"{e.name:<17} {t:<20} {backup.human(e.size_bytes):>10} {backup.human(e.extracted_bytes):>10} "
              f"{e.duration_sec:>6.1f}s {e.verify_sec:>6.1f}s  {e.server_role}")
    return 0


def cmd_backup_verify(args: argparse.Namespace) -> int:
    import asyncio

    from dvpnd.postgres import backup

    config = _pg_config(args)
    entry = backup.find_backup(config.backup, args.name)
    seconds = asyncio.run(backup.verify_backup(config, entry))
    print(f"backup {entry.name}: verified against its manifest in {seconds:.1f}s")
    return 0


def cmd_backup_restore(args: argparse.Namespace) -> int:
    import asyncio

    from dvpnd.postgres import backup

    config = _pg_config(args)
    entry = backup.find_backup(config.backup, args.name)
    for line in asyncio.run(backup.restore(config, entry, args.to.resolve(), standby=args.standby)):
        print(line)
    print(f"start it with: {config.postgres.bin_dir / 'postgres'} -D {args.to.resolve()} "
          "(as the postgres user; give it its own port and socket directory if another server runs here)")
    return 0


def cmd_lab_up(args: argparse.Namespace) -> int:
    from dvpnd.lab import cluster as lab

    t0 = time.monotonic()
    nodes = lab.up(spokes=args.spokes, backend=args.backend, postgres=args.postgres)
    print(f"lab up in {time.monotonic() - t0:.1f}s ({args.spokes} spokes, {args.backend} backend"
          f"{', PostgreSQL' if args.postgres else ''})\n")
    print(lab.format_status(lab.status()))
    print("\nspoke to spoke through the hub (overlay ping):")
    ok = True
    for a, b, passed, summary in lab.ping_matrix(nodes):
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
    from dvpnd.lab import cluster as lab

    entries = lab.status()
    if args.json:
        print(json.dumps({"nodes": entries}, indent=2))
    elif not entries:
        print("no lab is up")
    else:
        print(lab.format_status(entries))
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


def _command(sub: Any, name: str, func: Any, help: str) -> argparse.ArgumentParser:
    """A subcommand that acts on a node's config (--config)."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help)
    _config_arg(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dvpnctl", description="control and inspect dvpnd")
    sub = ap.add_subparsers(dest="command", required=True)

    p = _command(sub, "check", cmd_check, "validate a config; exit 2 on problems")
    p = _command(sub, "pubkey", cmd_pubkey, "print this node's public key (creating its key if missing)")
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

    bk = sub.add_parser("backup", help="verified local backups").add_subparsers(dest="backup", required=True)
    p = _command(bk, "now", cmd_backup_now, "take a backup now (through dvpnd) and wait for it")
    p = _command(bk, "list", cmd_backup_list, "the verified backups, newest first")
    p.add_argument("--json", action="store_true")
    p = _command(bk, "verify", cmd_backup_verify, "check a backup against its manifest again (default: the newest)")
    p.add_argument("name", nargs="?")
    p = _command(bk, "restore", cmd_backup_restore, "unpack a backup into a new data directory (default: the newest)")
    p.add_argument("name", nargs="?")
    p.add_argument("--to", type=Path, required=True, help="a new or empty directory")
    p.add_argument("--standby", action="store_true", help="keep standby.signal (restore a replica as a replica)")

    lab = sub.add_parser("lab", help="a local lab in network namespaces").add_subparsers(dest="lab", required=True)
    p = lab.add_parser("up", help="build (or repair) the lab and show it working")
    p.add_argument("--spokes", type=int, default=3)
    p.add_argument("--backend", choices=("auto", "kernel", "userspace"), default="auto")
    p.add_argument("--postgres", action="store_true",
                   help="PostgreSQL 15 on the spokes: spoke-a primary, the others streaming replicas")
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
