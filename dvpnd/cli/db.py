"""dvpnctl's PostgreSQL and backup commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from dvpnd.cli.common import BadInput, load, request
from dvpnd.config.model import Config
from dvpnd.errors import EXIT_BAD_INPUT, EXIT_FAILURE

# --- PostgreSQL and backups -------------------------------------------------------------

def pg_config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    if not config.postgres.enabled:
        raise BadInput(f"{args.config}: no postgres section (this node has no database)")
    return config


def cmd_pg_setup(args: argparse.Namespace) -> int:
    from dvpnd.postgres import server as pg

    for line in pg.setup(pg_config(args)):
        print(line)
    return 0


def cmd_pg_password(args: argparse.Namespace) -> int:
    from dvpnd.postgres import server as pg

    config = pg_config(args)
    made = pg.make_password(config.postgres)
    print(f"{config.postgres.password_file}: {'created' if made else 'exists'} "
          "(copy the same file to every spoke, mode 0600)")
    return 0


def cmd_pg_init_replica(args: argparse.Namespace) -> int:
    from dvpnd.postgres import server as pg

    for line in pg.init_replica(pg_config(args), args.primary):
        print(line)
    return 0


def cmd_pg_promote(args: argparse.Namespace) -> int:
    from dvpnd.postgres import server as pg

    config = pg_config(args)
    print(pg.promote(config))
    print(f"now re-point the other replicas: run 'dvpnctl pg follow {config.address}' on each of them")
    return 0


def cmd_pg_follow(args: argparse.Namespace) -> int:
    from dvpnd.postgres import server as pg

    for line in pg.follow(pg_config(args), args.primary):
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
    if b is not None and b.get("tool") == "pgbackrest":
        lines += format_pgbackrest(b)
    elif b is not None:
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


def format_pgbackrest(b: dict[str, Any]) -> list[str]:
    from dvpnd.postgres.backup import human

    role = "" if b["primary"] else " (a replica: the primary backs up)"
    lines = [f"backup: pgBackRest, stanza {b['stanza']}{role}" + (f", running {b['running']}" if b["running"] else "")]
    for r in b["repos"]:
        lines.append(f"  {r['name']:<8} {'ok' if r['ok'] else r['status']}: {r['backups']} backups, newest full "
                     f"{r['last_full_time'] or 'none'}, newest diff {r['last_diff_time'] or 'none'}, "
                     f"WAL to {r['wal_max'] or 'none'}"
                     + (f", last {human(r['last_size'])}" if r.get("last_size") is not None else ""))
    if b["offsite_behind_segments"] is not None:
        lines.append(f"  offsite behind by {b['offsite_behind_segments']} WAL segments")
    lines.append(f"  pg_wal {human(b['pg_wal_bytes'])}, {b['wal_waiting_segments']} segments waiting to be archived")
    drill = b.get("last_ok", {}).get("drill")
    if drill:
        lines.append(f"  restore drill passed {drill} ({b.get('drill_databases')} databases answered)")
    for p in b["problems"]:
        lines.append(f"  problem: {p}")
    return lines


def cmd_pg_status(args: argparse.Namespace) -> int:
    st = request(args, "status")["status"]
    if "postgres" not in st:
        raise BadInput("this node's dvpnd reports no database (no postgres section)")
    print(json.dumps({k: st[k] for k in ("postgres", "backup") if k in st}, indent=2) if args.json else format_db(st))
    return 0


def cmd_backup_now(args: argparse.Namespace) -> int:
    from dvpnd.postgres.backup import human
    from dvpnd.serve import control

    config = pg_config(args)
    reply = control.request(config.control_socket, "backup-now", timeout=config.backup.timeout * 2 + 60)
    if not reply.get("ok"):
        for p in reply.get("problems", []):
            print(p, file=sys.stderr)
        return EXIT_BAD_INPUT if reply.get("bad_input") else EXIT_FAILURE
    if "pgbackrest" in reply:
        print("\n".join(format_pgbackrest(request(args, "status")["status"]["backup"])))
        return 0
    b = reply["backup"]
    print(f"backup {b['name']}: {human(b['size_bytes'])} in {b['duration_sec']}s, verified in {b['verify_sec']}s")
    return 0


def cmd_backup_list(args: argparse.Namespace) -> int:
    from dvpnd.postgres import backup

    config = pg_config(args)
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

    from dvpnd.postgres import restore

    config = pg_config(args)
    if config.backup.tool == "pgbackrest":
        raise BadInput("with backup.tool: pgbackrest, dvpnd runs pgBackRest's verify on its schedule "
                       "(see dvpnctl pg status) and restore drills; this command checks pg_basebackup backups")
    entry = restore.find_backup(config.backup, args.name)
    seconds = asyncio.run(restore.verify_backup(config, entry))
    print(f"backup {entry.name}: verified against its manifest in {seconds:.1f}s")
    return 0


def cmd_backup_restore(args: argparse.Namespace) -> int:
    import asyncio

    from dvpnd.postgres import restore

    config = pg_config(args)
    if config.backup.tool == "pgbackrest":
        from dvpnd.postgres import pgbr_restore

        if args.name:
            raise BadInput("with backup.tool: pgbackrest a restore takes --time TIME|latest and --from, not a name")
        for line in pgbr_restore.restore(config, args.to, args.time, args.source):
            print(line)
        return 0
    if args.time != "latest" or args.source != "local":
        raise BadInput("--time and --from need backup.tool: pgbackrest (pg_basebackup backups restore as taken)")
    entry = restore.find_backup(config.backup, args.name)
    for line in asyncio.run(restore.restore(config, entry, args.to.resolve(), standby=args.standby)):
        print(line)
    print(f"start it with: {config.postgres.bin_dir / 'postgres'} -D {args.to.resolve()} "
          "(as the postgres user; give it its own port and socket directory if another server runs here)")
    return 0
