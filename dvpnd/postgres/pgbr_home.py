"""pgBackRest's home on the volume, and running the runner (the thin parts of issue 19).

Layout, and who may write what (the postgres user runs pgBackRest and the archive command, so
it reads everything, but it writes only where pgBackRest writes; what decides which program
runs and where the backups go stays root's):

    HOME/                   root:postgres 2750   (set-group-ID: files made here are the group's)
      pgbackrest.conf       root:postgres 0640   (no secret)
      runner.json           root:postgres 0640   (the runner's command line, the repository)
      conf.d/               root:postgres 2750
        secrets.conf        root:postgres 0640   (the S3 key pair, the cipher passphrase)
      spool/ lock/ log/ results/ drill/   postgres 0750
    the local repository    postgres 0750 (HOME/repo unless backup.pgbackrest.repo says otherwise)

The directories need a root that may change owners: dvpnd itself where it runs as plain root
(the lab, a container); under systemd, where dvpnd's unit has no such capability, the runner's
unit does it in a `+` (privileged) ExecStartPre (`apply_dirs`), and dvpnd then writes the
three files, which take the group from the set-group-ID directory. A directory found in the way
that is a symbolic link or not a directory is refused (nothing is written through it).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvpnd.errors import DvpnError
from dvpnd.postgres.pgbackrest import Plan
from dvpnd.util.fsutil import read_regular, write_atomic
from dvpnd.util.procutil import child_env

OWNED = ("spool", "lock", "log", "results", "drill")
# dvpnd reads these, as root but without CAP_DAC_OVERRIDE under its unit: their group is root's
# and set-group-ID, so what pgBackRest and the runner write in them (0640) dvpnd may read
READ_BY_DVPND = ("spool", "results")
UNIT = "dvpn-pgbackrest@{op}.service"


class HomeError(DvpnError):
    pass


@dataclass(frozen=True)
class Files:
    conf: str
    secrets: str
    runner: str


def _dir(path: Path, uid: int, gid: int, mode: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, mode)
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise HomeError(f"{path}: not a directory (a symbolic link or a file is in the way; remove it)")
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def apply_dirs(home: Path, repo: Path, user: str) -> None:
    """The directories of the layout, with their owners and modes (needs CAP_CHOWN)."""
    try:
        u = pwd.getpwnam(user)
    except KeyError:
        raise HomeError(f"postgres.os_user {user!r}: no such user") from None
    pg = (u.pw_uid, u.pw_gid)
    home.parent.mkdir(parents=True, exist_ok=True)
    _dir(home, 0, u.pw_gid, 0o2750)
    _dir(home / "conf.d", 0, u.pw_gid, 0o2750)
    for name in OWNED:
        if name in READ_BY_DVPND:
            _dir(home / name, u.pw_uid, 0, 0o2750)
        else:
            _dir(home / name, *pg, 0o750)
    repo.parent.mkdir(parents=True, exist_ok=True)
    _dir(repo, *pg, 0o750)


def wal_backlog(data_dir: Path) -> tuple[int, int]:
    """(bytes in pg_wal, segments waiting to be archived: archive_status/*.ready)."""
    total, ready = 0, 0
    try:
        with os.scandir(data_dir / "pg_wal") as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
        with os.scandir(data_dir / "pg_wal" / "archive_status") as it:
            ready = sum(1 for e in it if e.name.endswith(".ready"))
    except OSError:
        pass
    return total, ready


def write_files(plan: Plan, files: Files) -> list[str]:
    """Write the files that differ (root's, the home's group, 0640); the names of those written.
    The home must exist (apply_dirs)."""
    try:
        st = os.lstat(plan.home)
    except OSError as e:
        raise HomeError(f"{plan.home}: {e.strerror} (the runner's layout step makes it)") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise HomeError(f"{plan.home}: not a directory of root's")
    gid = st.st_gid
    written = []
    for path, text in ((plan.conf, files.conf), (plan.secrets, files.secrets),
                       (plan.home / "runner.json", files.runner)):
        try:
            have = os.lstat(path)
            same = read_regular(path, 1 << 20) == text and (have.st_uid, have.st_gid, stat.S_IMODE(have.st_mode)) == (
                0, gid, 0o640)
        except (DvpnError, OSError):
            same = False  # (missing, or something odd in its place: replaced)
        if not same:
            write_atomic(path, text.encode(), 0o640, owner=(0, gid))
            written.append(path.name)
    return written


def apply_home(plan: Plan, files: Files, repo: Path, user: str) -> list[str]:
    """Both steps, where dvpnd may change owners itself (runner: direct)."""
    apply_dirs(plan.home, repo, user)
    return write_files(plan, files)


def read_result(home: Path, op: str) -> dict[str, Any] | None:
    """The runner's last result for `op` (written by the postgres user: checked, not trusted)."""
    try:
        text = read_regular(home / "results" / f"{op}.json", 16 << 20)
    except DvpnError:
        return None
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("op") != op or not isinstance(doc.get("steps"), list):
        return None
    if not all(isinstance(doc.get(k), (int, float)) for k in ("started", "finished")):
        return None
    return doc


def use_systemd(runner: str) -> bool:
    """auto: under systemd (dvpnd's unit sets INVOCATION_ID) the templated unit, else directly."""
    return runner == "systemd" or (runner == "auto" and bool(os.environ.get("INVOCATION_ID")))


async def layout(home: Path, runner: str) -> None:
    """Under systemd: have the runner's unit make the directories (its privileged step)."""
    if use_systemd(runner):
        rc, err = await run_op(home, "layout", "", runner)
        if rc != 0:
            raise HomeError(f"systemctl start {UNIT.format(op='layout')}: exit {rc}: {err.strip()[-300:]}")


async def run_op(home: Path, op: str, user: str, runner: str) -> tuple[int, str]:
    """Run one operation through the runner; (exit code, the end of its error output)."""
    if use_systemd(runner):
        argv = ["systemctl", "start", UNIT.format(op=op)]
        kw: dict[str, Any] = {}
    else:
        u = pwd.getpwnam(user)
        argv = [sys.executable, "-m", "dvpnd.postgres.pgbr_run", "--home", str(home), op]
        kw = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": [], "cwd": "/",
              "env": child_env(PYTHONPATH=os.pathsep.join(p for p in sys.path if p))}
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE, **kw)
    try:
        _, err = await proc.communicate()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()  # (a cancelled run is not counted: its result file says what it did)
            await proc.wait()
        raise
    return proc.returncode or 0, err.decode(errors="replace")[-2000:]
