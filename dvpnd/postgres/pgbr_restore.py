"""dvpnctl backup restore: a point in time (or the latest archived WAL) from the local or the
offsite repository, as the server's user, into a new or empty directory: the copy starts with
archiving off (it never pushes WAL into the stanza it came from) and promotes itself at the
target. Restore next to the live directory, check, then swap with the server stopped; or, with
--force and the server stopped, over it (pgBackRest's delta restore; never under a running
server)."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from pathlib import Path

from dvpnd.config.model import Config
from dvpnd.errors import DvpnError
from dvpnd.postgres.pgbackrest import copy_spool, plan_for, restore_argv
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
        raise RestoreError(f"--to {text[:60]!r}: 'latest' or a moment with its time zone, e.g. "
                           "'2026-11-26 13:05:00+00' (a time without a zone would be read in the server's)")
    zone = "+00" if m.group(3) == "Z" else m.group(3)
    return f"{m.group(1)} {m.group(2)}{zone}"


def restore(config: Config, to: Path, when: str, source: str, force: bool = False) -> list[str]:
    """Restore into `to`: a new or empty directory; with `force` also one that holds files, or the
    live data directory once its server is stopped (pgBackRest's delta restore over it)."""
    plan = plan_for(config)
    repo = {"local": 1, "offsite": 2}.get(source)
    if repo is None or repo not in {r.index for r in plan.repos}:
        raise RestoreError(f"--from {source}: this spoke has {' and '.join(('local', 'offsite')[:len(plan.repos)])}")
    target = parse_target(when)
    to = to.resolve()
    live = to == config.postgres.data_dir.resolve()
    if live and not force:
        raise RestoreError(f"{to} is the live data directory: restore into a new one, then swap them "
                           "with the server stopped (or, with the server stopped, --force restores over it)")
    if (to / "postmaster.pid").exists():
        raise RestoreError(f"{to}: a server is running on it (postmaster.pid): a restore never writes under a "
                           "running server; stop it first")
    in_place = False
    if to.exists():
        if not to.is_dir() or to.is_symlink():
            raise RestoreError(f"{to}: not a directory")
        if any(to.iterdir()):
            if not force:
                raise RestoreError(f"{to}: not an empty directory (a restore never writes over data; "
                                   "--force restores over it, keeping what matches)")
            in_place = True
    else:
        to.mkdir(mode=0o700, parents=False)
    in_place = in_place or live  # (over files: a delta restore)
    try:
        u = pwd.getpwnam(config.postgres.os_user)
    except KeyError:
        raise RestoreError(f"postgres.os_user {config.postgres.os_user!r}: no such user") from None
    st = os.lstat(to)
    if (st.st_uid, st.st_gid) != (u.pw_uid, u.pw_gid):
        if in_place:  # (never chown what holds data: it is the server's already, or not ours to take)
            raise RestoreError(f"{to}: owned by uid {st.st_uid}, not {u.pw_name}")
        os.chown(to, u.pw_uid, u.pw_gid)
    if not in_place:  # (over data pgBackRest sets the mode itself, the backed-up cluster's, from its manifest)
        to.chmod(0o700)
    argv = restore_argv(plan, to, target, repo, delta=in_place)
    p = subprocess.run(argv, capture_output=True, text=True, errors="replace", cwd="/", env=child_env(),
                       user=u.pw_uid, group=u.pw_gid, extra_groups=[])
    if p.returncode != 0:
        raise RestoreError(f"pgbackrest restore (repository {repo}, {source}): exit {p.returncode}: "
                           f"{p.stderr.strip()[-800:]}")
    how = ("over the live data directory (delta), archiving as configured" if live else
           "over what was there (delta), archiving off in the copy" if in_place else "archiving off in the copy")
    lines = [f"restored the {source} repository to {target} into {to} ({how})",
             f"start it with: {config.postgres.bin_dir / 'pg_ctl'} -D {to} start (as {u.pw_name}"
             + ("" if live else "; give it its own port and socket directory if another server runs here") + ")"]
    if not live:
        lines.append(f"its WAL queue while it recovers: {copy_spool(plan, to)} (remove it with the copy)")
    return lines
