"""Checking and restoring a backup on demand (dvpnctl backup verify / restore): a restore writes
a data directory a server can start from, checked against its manifest first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dvpnd.config.model import BackupConfig, Config
from dvpnd.postgres import conf as pgconf
from dvpnd.postgres.backup import MANIFEST, BackupEntry, BackupError, extract, list_backups, run_tool, verify_dir

# --- verify and restore (dvpnctl) --------------------------------------------------------

def find_backup(bc: BackupConfig, name: str | None) -> BackupEntry:
    entries = list_backups(bc.dir)
    if not entries:
        raise BackupError(f"{bc.dir}: no verified backup")
    if name is None:
        return entries[0]
    for e in entries:
        if e.name == name:
            return e
    raise BackupError(f"{bc.dir}: no backup named {name!r} (have: {', '.join(e.name for e in entries[:5])}"
                      f"{' ...' if len(entries) > 5 else ''})")


async def verify_backup(config: Config, entry: BackupEntry) -> float:
    bc = config.backup
    scratch = bc.dir / f".verify-{entry.name}-{os.getpid()}"
    seconds, _ = await verify_dir(config.postgres, bc.dir / entry.name, scratch, bc.timeout)
    return seconds


async def restore(config: Config, entry: BackupEntry, to: Path, standby: bool = False) -> list[str]:
    """Unpack a backup into `to` (absent or empty), check it against its manifest, and leave a
    data directory a server can start from, owned by postgres.os_user."""
    pg, bc = config.postgres, config.backup
    if to.exists() and any(to.iterdir()):
        raise BackupError(f"{to}: not empty; restore writes into a new or empty directory")
    created = not to.exists()
    source = bc.dir / entry.name
    try:
        await extract(pg, source, to, bc.timeout)
        await run_tool([str(pg.bin_dir / "pg_verifybackup"), "-q", "-m", str(source / MANIFEST), str(to)],
                   f"pg_verifybackup of the restored {to}", bc.timeout)
    except BaseException:
        if created:
            shutil.rmtree(to, ignore_errors=True)
        else:
            for child in to.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
        raise
    done = [f"unpacked {entry.name} into {to} and checked it against its manifest"]
    conf = to / pgconf.CONF_NAME
    if conf.exists() and pg.config_dir == pg.data_dir:
        conf.write_text(pgconf.relocate_conf(conf.read_text(), str(pg.data_dir), str(to)))
        done.append(f"{conf.name}: hba_file and ident_file now point into {to}")
    if not standby:
        for sig in ("standby.signal", "recovery.signal"):
            if (to / sig).exists():
                (to / sig).unlink()
                done.append(f"removed {sig}: the restored server starts as a primary")
    os.chmod(to, 0o700)
    if os.geteuid() == 0:
        from dvpnd.postgres.server import server_user

        u = server_user(pg)
        for root, dirs, files in os.walk(to):
            for n in [*dirs, *files]:
                os.lchown(os.path.join(root, n), u.pw_uid, u.pw_gid)
        os.chown(to, u.pw_uid, u.pw_gid)
        done.append(f"owned by {pg.os_user}")
    return done
