"""dvpnctl backup restore: a point in time (or the latest archived
WAL) from the local or the offsite repository, into a new or empty directory, as the server's
user. Never into the live data directory: restore next to it, check, then swap with the server
stopped. The copy starts with archiving off (it never pushes WAL into the stanza it came from)
and promotes itself at the target."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from pathlib import Path

from dvpnd.config.model import Config
from dvpnd.errors import DvpnError
from dvpnd.postgres.pgbackrest import plan_for, restore_argv
from dvpnd.util.procutil import child_env

TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)(Z|[+-]\d{2}(?::?\d{2})?)\Z")


class RestoreError(DvpnError):
    pass


def parse_target(text: str) -> str:
    """'latest', or a moment with its time zone, as pgBackRest takes it ('2026-11-26 13:05:00+00')."""
    if text == "latest":
        return text
    m = TIME_RE.match(text.strip())
    if m is None:
        raise RestoreError(f"--time {text[:60]!r}: 'latest' or a moment with its time zone, e.g. "
                           "'2026-11-26 13:05:00+00' (a time without a zone would be read in the server's)")
    zone = "+00" if m.group(3) == "Z" else m.group(3)
    return f"{m.group(1)} {m.group(2)}{zone}"


def restore(config: Config, to: Path, when: str, source: str) -> list[str]:
    plan = plan_for(config)
    repo = {"local": 1, "offsite": 2}.get(source)
    if repo is None or repo not in {r.index for r in plan.repos}:
        raise RestoreError(f"--from {source}: this spoke has {' and '.join(('local', 'offsite')[:len(plan.repos)])}")
    target = parse_target(when)
    to = to.resolve()
    if to == config.postgres.data_dir.resolve():
        raise RestoreError(f"{to} is the live data directory: restore into a new one, then swap them "
                           "with the server stopped")
    if to.exists():
        if not to.is_dir() or to.is_symlink() or any(to.iterdir()):
            raise RestoreError(f"{to}: not an empty directory (a restore never writes over data)")
    else:
        to.mkdir(mode=0o700, parents=False)
    try:
        u = pwd.getpwnam(config.postgres.os_user)
    except KeyError:
        raise RestoreError(f"postgres.os_user {config.postgres.os_user!r}: no such user") from None
    os.chown(to, u.pw_uid, u.pw_gid)
    to.chmod(0o700)
    argv = restore_argv(plan, to, target, repo)
    p = subprocess.run(argv, capture_output=True, text=True, errors="replace", cwd="/", env=child_env(),
                       user=u.pw_uid, group=u.pw_gid, extra_groups=[])
    if p.returncode != 0:
        raise RestoreError(f"pgbackrest restore (repository {repo}, {source}): exit {p.returncode}: "
                           f"{p.stderr.strip()[-800:]}")
    return [f"restored the {source} repository to {target} into {to} (archiving off in the copy)",
            f"start it with: {config.postgres.bin_dir / 'pg_ctl'} -D {to} start (as {u.pw_name}; give it its own "
            "port and socket directory if another server runs here)"]
