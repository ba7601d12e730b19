"""dvpnctl's PostgreSQL and backup commands."""

from __future__ import annotations

import argparse
import json
import sys
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
    if b is not None:
        lines += format_pgbackrest(b)
    return "\n".join(lines)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_pgbackrest(b: dict[str, Any]) -> list[str]:
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
    from dvpnd.serve import control

    config = pg_config(args)
    # (a full backup of a large database takes hours: dvpnd's answer comes when it is done)
    reply = control.request(config.control_socket, "backup-now", timeout=7 * 86400)
    if not reply.get("ok"):
        for p in reply.get("problems", []):
            print(p, file=sys.stderr)
        return EXIT_BAD_INPUT if reply.get("bad_input") else EXIT_FAILURE
    print("\n".join(format_pgbackrest(request(args, "status")["status"]["backup"])))
    return 0


def cmd_backup_status(args: argparse.Namespace) -> int:
    st = request(args, "status")["status"]
    b = st.get("backup")
    if b is None:
        raise BadInput("this node's dvpnd takes no backups (no postgres section, or backup.enabled: false)")
    print(json.dumps(b, indent=2) if args.json else "\n".join(format_pgbackrest(b)))
    return 0


def cmd_backup_restore(args: argparse.Namespace) -> int:
    from dvpnd.postgres import pgbr_restore

    config = pg_config(args)
    if not config.backup.enabled:
        raise BadInput(f"{args.config}: backups are off (backup.enabled: false)")
    try:
        pgbr_restore.parse_target(args.when)
    except pgbr_restore.RestoreError as e:
        raise BadInput(str(e)) from None
    for line in pgbr_restore.restore(config, args.target, args.when, args.source, force=args.force):
        print(line)
    return 0
