"""dvpn-pgbackrest: one pgBackRest operation as the PostgreSQL server's user, its result in a file.

pgBackRest reads the data directory and the archive command runs as `postgres`, while dvpnd's
unit may not switch users. So dvpnd never runs pgBackRest itself: under systemd it starts
`dvpn-pgbackrest@OP.service` (User=postgres, a oneshot), elsewhere (the lab, a container,
where dvpnd is plain root) it starts this module as that user. Either way:

    dvpn-pgbackrest --home HOME OP        (python3 -m dvpnd.postgres.pgbr_run)

OP is one of a fixed set (pgbackrest.OPS); the command lines come from HOME/runner.json,
which dvpnd writes and the postgres user can only read (HOME is root's). The result goes to
HOME/results/OP.json (the postgres user's directory): start and end, each run's exit code and
the end of its error output, and for `info` pgBackRest's own JSON. dvpnd reads it as
untrusted input. The exit code is 0 only if every run succeeded.

`layout` (as root: the unit's privileged ExecStartPre) makes the home's directories with their
owners (pgbr_home.apply_dirs) for the user `--user` names; as any other user it does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dvpnd.errors import DvpnError
from dvpnd.postgres.pgbackrest import DRILL_PORT, OPS, drill_argv, op_argvs
from dvpnd.postgres.pgbr_home import apply_dirs, wal_backlog
from dvpnd.util.fsutil import read_regular, write_atomic
from dvpnd.util.procutil import with_pdeathsig

TAIL = 4000
RUN_TIMEOUT = 24 * 3600.0
LOCK_ERROR = 50  # pgBackRest's exit code when another of its processes holds the lock
LOCK_WAIT = 60.0  # how long a run waits for it (archive-push holds the archive lock while it pushes)


def _runner_doc(home: Path) -> dict[str, Any]:
    text = read_regular(home / "runner.json", 64 * 1024)
    if text is None:
        raise SystemExit(f"{home / 'runner.json'}: missing (dvpnd writes it)")
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise SystemExit(f"{home / 'runner.json'}: not a JSON object")
    return doc


def load_runner(home: Path) -> tuple[list[str], tuple[int, ...]]:
    doc = _runner_doc(home)
    argv, repos = doc.get("argv"), doc.get("repos")
    if (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
            or not argv[0].startswith("/") or not all(a.startswith("--") for a in argv[1:])):
        raise SystemExit(f"{home / 'runner.json'}: 'argv' must be an absolute program and --options")
    if not isinstance(repos, list) or not repos or not all(isinstance(r, int) and 1 <= r <= 4 for r in repos):
        raise SystemExit(f"{home / 'runner.json'}: 'repos' must list repository numbers 1 to 4")
    return argv, tuple(repos)


def _step(argv: list[str], timeout: float, lock_wait: float = LOCK_WAIT) -> tuple[dict[str, Any], str]:
    """Run one command; (its step record, its output). A command refused for a lock another
    pgBackRest process holds (right after a promotion, archive-push is pushing the new
    timeline's files while the stanza is taken over) is run again each second for `lock_wait`."""
    t0 = time.monotonic()
    while True:
        step, out = _step_once(argv, timeout)
        if step["rc"] != LOCK_ERROR or time.monotonic() - t0 >= lock_wait:
            step["seconds"] = round(time.monotonic() - t0, 3)
            return step, out
        time.sleep(1.0)


def _step_once(argv: list[str], timeout: float) -> tuple[dict[str, Any], str]:
    t0 = time.monotonic()
    try:
        # (dies with the runner: dvpnd kills the runner when it stops mid-operation, and a
        # pgBackRest left behind would go on holding the stanza's lock)
        p = subprocess.run(with_pdeathsig(argv), capture_output=True, text=True, errors="replace", timeout=timeout,
                           cwd="/",
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = -1, "", f"timed out after {timeout:.0f} s"
    except OSError as e:
        rc, out, err = -1, "", f"{argv[0]}: {e.strerror}"
    return {"args": argv[1:], "rc": rc, "seconds": round(time.monotonic() - t0, 3), "stderr": err[-TAIL:]}, out


DRILL_CONF = """# a restore drill's server (dvpn-pgbackrest): a Unix socket only, nothing archived; the
# settings that matter are given on the command line too (they outrank postgresql.auto.conf)
hot_standby = on
"""
# settings a recovering server needs at least as high as the primary had (pg_controldata's names)
CONTROL_SETTINGS = {"max_connections setting": "max_connections",
                    "max_worker_processes setting": "max_worker_processes",
                    "max_wal_senders setting": "max_wal_senders",
                    "max_prepared_xacts setting": "max_prepared_transactions",
                    "max_locks_per_xact setting": "max_locks_per_transaction"}


def drill_options(scratch: Path, controldata: str) -> str:
    """pg_ctl -o for the drill's server: its own socket, no TCP, no archiving, and the primary's
    own values of the settings recovery checks (from the copy's pg_controldata)."""
    opts = [f"-c config_file={scratch / 'postgresql.conf'}", f"-c hba_file={scratch / 'pg_hba.conf'}",
            f"-c ident_file={scratch / 'pg_ident.conf'}", f"-c port={DRILL_PORT}", "-c listen_addresses=''",
            f"-c unix_socket_directories={scratch}", "-c archive_mode=off"]
    for line in controldata.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in CONTROL_SETTINGS and value.strip().isdigit():
            opts.append(f"-c {CONTROL_SETTINGS[name.strip()]}={value.strip()}")
    return " ".join(opts)


def drill(home: Path, base: list[str], bin_dir: Path, result: dict[str, Any], timeout: float) -> bool:
    """Restore the newest local backup into HOME/drill, start a server on it (a socket in the
    same directory, no TCP), wait until it is promoted, run a check query, stop it, remove it."""
    scratch = home / "drill"
    data, spool = scratch / "data", scratch / "spool"
    for d in (data, spool):  # (a drill killed midway left them)
        shutil.rmtree(d, ignore_errors=True)
    steps = result["steps"]
    step, _ = _step(drill_argv(base, data, spool), timeout)
    steps.append(step)
    if step["rc"] != 0:
        return False
    (scratch / "postgresql.conf").write_text(DRILL_CONF)
    (scratch / "pg_hba.conf").write_text("local all all peer\n")
    (scratch / "pg_ident.conf").write_text("")
    step, control = _step([str(bin_dir / "pg_controldata"), str(data)], 60)
    if step["rc"] != 0:
        steps.append(step)
        return False
    opts = drill_options(scratch, control)
    ctl = str(bin_dir / "pg_ctl")
    started = False
    try:
        step, _ = _step([ctl, "-D", str(data), "-w", "-t", "600", "-l", str(scratch / "server.log"), "-o", opts,
                         "start"], timeout)
        steps.append(step)
        if step["rc"] != 0:
            step["stderr"] += _tail(scratch / "server.log")
            return False
        started = True
        psql = [str(bin_dir / "psql"), "-X", "-h", str(scratch), "-p", str(DRILL_PORT), "-d", "postgres", "-Atq", "-c"]
        deadline = time.monotonic() + 600
        while True:
            step, out = _step([*psql, "SELECT pg_is_in_recovery()"], 60)
            if step["rc"] == 0 and out.strip() == "f":
                break
            if time.monotonic() > deadline:
                step["stderr"] = "the restored server was not promoted within 600 s" + _tail(scratch / "server.log")
                steps.append(step)
                return False
            time.sleep(0.5)
        step, out = _step([*psql, "SELECT count(*), sum(pg_database_size(oid)) FROM pg_database"], 300)
        steps.append(step)
        if step["rc"] != 0:
            return False
        n, size = (out.strip().split("|") + ["0", "0"])[:2]
        result["check"] = {"databases": int(n or 0), "bytes": int(size or 0)}
        return True
    finally:
        if started:
            steps.append(_step([ctl, "-D", str(data), "-w", "-m", "fast", "stop"], 300)[0])
        for d in (data, spool):
            shutil.rmtree(d, ignore_errors=True)


def _tail(path: Path) -> str:
    try:
        return "\n" + path.read_text(errors="replace")[-1500:]
    except OSError:
        return ""


def run(home: Path, op: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    base, repos = load_runner(home)
    result: dict[str, Any] = {"op": op, "started": time.time(), "pid": os.getpid(), "steps": []}
    if op == "drill":
        bin_dir = _runner_doc(home).get("bin_dir")
        ok = isinstance(bin_dir, str) and bin_dir.startswith("/") and drill(home, base, Path(bin_dir), result, timeout)
        result.update(finished=time.time(), ok=ok)
        return result
    ok = True
    for argv in op_argvs(base, repos, op):
        step, out = _step(argv, timeout)
        rc = step["rc"]
        if op == "info" and rc == 0:
            try:
                result["info"] = json.loads(out)
            except ValueError:
                rc = step["rc"] = -1
                step["stderr"] = "pgbackrest info: the output is not JSON"
        result["steps"].append(step)
        ok = ok and rc == 0
    pg_path = _runner_doc(home).get("pg_path") if op == "info" else None
    if isinstance(pg_path, str) and pg_path.startswith("/"):
        result["wal"] = list(wal_backlog(Path(pg_path)))  # (bytes in pg_wal, segments waiting)
    result.update(finished=time.time(), ok=ok)
    return result


def layout(home: Path, user: str) -> int:
    if os.geteuid() != 0:
        return 0  # (the unit's main step: the privileged ExecStartPre did the work)
    repo = home / "repo"
    try:
        text = read_regular(home / "runner.json", 64 * 1024)
        path = json.loads(text).get("repo_path") if text else None
        if isinstance(path, str) and path.startswith("/"):
            repo = Path(path)
        apply_dirs(home, repo, user)
    except (DvpnError, OSError, ValueError) as e:
        print(f"dvpn-pgbackrest layout: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dvpn-pgbackrest", description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--user", default="postgres", help="layout: the server's user (default: postgres)")
    ap.add_argument("op", choices=(*OPS, "layout"))
    a = ap.parse_args(argv)
    if a.op == "layout":
        return layout(a.home, a.user)
    result = run(a.home, a.op)
    results = a.home / "results"
    write_atomic(results / f"{a.op}.json", json.dumps(result).encode(), 0o640)
    for s in result["steps"]:
        if s["rc"] != 0:
            how = f"killed by signal {-s['rc']}" if s["rc"] < -1 else f"exit {s['rc']}"
            print(f"pgbackrest {' '.join(s['args'][-2:])}: {how}: {s['stderr'].strip()[-500:]}".rstrip(": "),
                  file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
