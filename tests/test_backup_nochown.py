"""Backup verification unpacks a backup as root; under the shipped unit root has no CAP_CHOWN
(CapabilityBoundingSet), and GNU tar as root restores owners, so verification failed with
"Cannot change ownership". Reproduced here with the same bounding set (setpriv)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.process, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a bounding set without CAP_CHOWN)")]

EXTRACT = """
import asyncio, sys
from pathlib import Path
from dvpnd.config.model import PostgresConfig
from dvpnd.postgres import backup
try:
    asyncio.run(backup.extract(PostgresConfig(), Path(sys.argv[1]), Path(sys.argv[2]), 60, owners=sys.argv[3] == "1"))
except backup.BackupError as e:
    print(e)
    sys.exit(1)
"""


def _backup(d: Path) -> Path:
    src = d / "backup"
    src.mkdir()
    with tarfile.open(src / "base.tar", "w") as t:
        data = b"16\n"
        info = tarfile.TarInfo("PG_VERSION")
        info.size, info.uid, info.gid, info.mode = len(data), 4242, 4242, 0o600
        t.addfile(info, io.BytesIO(data))
    return src


@pytest.mark.parametrize("owners, ok", [(True, False), (False, True)])
def test_verification_unpacks_without_cap_chown(tmp_path: Path, owners: bool, ok: bool) -> None:
    src = _backup(tmp_path)
    dest = tmp_path / f"scratch-{owners}"
    r = subprocess.run(["setpriv", "--bounding-set=-chown", "--", sys.executable, "-c", EXTRACT,
                        str(src), str(dest), "1" if owners else "0"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
        assert (dest / "PG_VERSION").read_text() == "16\n"
    else:  # what the unit did before: tar exits 2 trying to give the file its owner back
        assert r.returncode == 1 and "tar: Exiting with failure status" in r.stdout, r.stdout + r.stderr
