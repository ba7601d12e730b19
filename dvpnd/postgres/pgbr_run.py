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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dvpnd.errors import DvpnError
from dvpnd.postgres.pgbackrest import OPS, op_argvs
from dvpnd.postgres.pgbr_home import apply_dirs
from dvpnd.util.fsutil import read_regular, write_atomic

TAIL = 4000
RUN_TIMEOUT = 24 * 3600.0


def load_runner(home: Path) -> tuple[list[str], tuple[int, ...]]:
    text = read_regular(home / "runner.json", 64 * 1024)
    if text is None:
        raise SystemExit(f"{home / 'runner.json'}: missing (dvpnd writes it)")
    doc = json.loads(text)
    argv, repos = doc.get("argv"), doc.get("repos")
    if (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
            or not argv[0].startswith("/") or not all(a.startswith("--") for a in argv[1:])):
        raise SystemExit(f"{home / 'runner.json'}: 'argv' must be an absolute program and --options")
    if not isinstance(repos, list) or not repos or not all(isinstance(r, int) and 1 <= r <= 4 for r in repos):
        raise SystemExit(f"{home / 'runner.json'}: 'repos' must list repository numbers 1 to 4")
    return argv, tuple(repos)


def run(home: Path, op: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    base, repos = load_runner(home)
    result: dict[str, Any] = {"op": op, "started": time.time(), "pid": os.getpid(), "steps": []}
    ok = True
    for argv in op_argvs(base, repos, op):
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, cwd="/",
                               env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired:
            rc, out, err = -1, "", f"timed out after {timeout:.0f} s"
        except OSError as e:
            rc, out, err = -1, "", f"{argv[0]}: {e.strerror}"
        step: dict[str, Any] = {"args": argv[1:], "rc": rc, "seconds": round(time.monotonic() - t0, 3),
                                "stderr": err[-TAIL:]}
        if op == "info" and rc == 0:
            try:
                result["info"] = json.loads(out)
            except ValueError:
                rc = step["rc"] = -2
                step["stderr"] = "pgbackrest info: the output is not JSON"
        result["steps"].append(step)
        ok = ok and rc == 0
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
            print(f"pgbackrest {' '.join(s['args'][-2:])}: exit {s['rc']}: {s['stderr'].strip()[-500:]}",
                  file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
