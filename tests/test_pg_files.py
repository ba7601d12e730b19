"""dvpnctl pg setup / init-replica run as root and write into directories the server's user
(`postgres`) owns: what a compromised database user can plant there must not turn into a root
write, a disclosure or a chown. Real files, the real postgres user; root needed."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from dvpnd.config.load import load_config
from dvpnd.config.model import Config
from dvpnd.postgres import conf as pgconf
from dvpnd.postgres import server as pg

from .test_config import SPOKE

try:
    PGUSER = pwd.getpwnam("postgres")
except KeyError:
    PGUSER = None

pytestmark = [pytest.mark.process, pytest.mark.skipif(os.geteuid() != 0 or PGUSER is None,
                                reason="needs root and the postgres user (postgresql-15, ./dev setup)")]
SECRET = "PRIVATE-KEY-MATERIAL-0123456789"


@pytest.fixture
def tree() -> Iterator[Path]:
    """BASE/pg (the server's, like /var/lib/postgresql/15) beside root's own files in BASE,
    where postgres can reach it (pytest's own temporary tree is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="dvpn-pgfiles-", dir="/var/tmp"))
    try:
        os.chmod(base, 0o755)
        assert PGUSER is not None
        home = base / "pg"
        home.mkdir(mode=0o700)
        os.chown(home, PGUSER.pw_uid, PGUSER.pw_gid)
        yield base
    finally:
        shutil.rmtree(base)


def config(base: Path, data: Path | None = None) -> Config:
    data = data or base / "pg" / "data"
    f = base / "dvpnd.yaml"
    secret = base / "pg-replication.password"
    secret.write_text("r" * 32 + "\n")
    secret.chmod(0o600)
    f.write_text(SPOKE + f"postgres:\n  primary: 10.88.0.11\n  data_dir: {data}\n  config_dir: {data}\n"
                 f"  socket_dir: {base}/run\n  password_file: {secret}\n")
    return load_config(f)


def as_postgres(*argv: str) -> None:
    assert PGUSER is not None
    subprocess.run(["setpriv", f"--reuid={PGUSER.pw_uid}", f"--regid={PGUSER.pw_gid}", "--init-groups", "--", *argv],
                   check=True)


def root_secret(base: Path) -> Path:
    s = base / "root-only.key"
    s.write_text(SECRET + "\n")
    s.chmod(0o600)
    return s


def test_setup_writes_the_servers_files_as_the_servers_user_and_a_second_run_changes_nothing(tree: Path) -> None:
    c = config(tree)
    as_postgres("mkdir", "-m", "0700", str(c.postgres.data_dir))
    as_postgres("sh", "-c", f"echo 'port = 5432' > {c.postgres.data_dir}/postgresql.conf")
    changed = pg.write_files(c)
    assert len(changed) == 5
    for name, mode in ((pgconf.CONF_NAME, 0o640), (pgconf.HBA_NAME, 0o640), (pgconf.IDENT_NAME, 0o640),
                       ("postgresql.conf", 0o644)):
        st = (c.postgres.data_dir / name).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (PGUSER.pw_uid, mode), name  # type: ignore[union-attr]
    st = c.postgres.passfile.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (PGUSER.pw_uid, 0o600)  # type: ignore[union-attr]
    assert pgconf.INCLUDE_LINE in (c.postgres.data_dir / "postgresql.conf").read_text()
    assert pg.write_files(c) == []


def test_a_symlink_planted_at_postgresql_conf_is_refused_and_discloses_nothing(tree: Path) -> None:
    """Regression: setup copied a root-only 0600 file, through this link, into a 0644 file
    owned by postgres."""
    c = config(tree)
    secret = root_secret(tree)
    d = c.postgres.data_dir
    as_postgres("mkdir", "-m", "0700", str(d))
    as_postgres("ln", "-s", str(secret), str(d / "postgresql.conf"))
    with pytest.raises(pg.PgError, match=r"postgresql.conf: a symbolic link; refusing to follow it"):
        pg.write_files(c)
    for f in d.iterdir():
        assert f.is_symlink() or SECRET not in f.read_text(), f
    st = secret.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert os.readlink(d / "postgresql.conf") == str(secret)


@pytest.mark.parametrize("name", [pgconf.HBA_NAME, pgconf.CONF_NAME])
def test_a_symlink_or_fifo_at_a_dvpn_file_is_refused(tree: Path, name: str) -> None:
    c = config(tree)
    secret = root_secret(tree)
    d = c.postgres.data_dir
    as_postgres("mkdir", "-m", "0700", str(d))
    as_postgres("sh", "-c", f"echo 'port = 5432' > {d}/postgresql.conf")
    as_postgres("ln", "-s", str(secret), str(d / name))
    with pytest.raises(pg.PgError, match="a symbolic link"):
        pg.write_files(c)
    assert secret.read_text() == SECRET + "\n" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    (d / name).unlink()
    as_postgres("mkfifo", str(d / name))
    with pytest.raises(pg.PgError, match="not a regular file"):
        pg.write_files(c)  # and does not hang on the FIFO
    (d / name).unlink()
    as_postgres("mkdir", str(d / name))
    with pytest.raises(pg.PgError, match="not a regular file"):
        pg.write_files(c)  # a directory: refused, not a traceback


def test_a_symlinked_data_dir_is_refused_and_its_target_keeps_its_owner(tree: Path) -> None:
    """Regression: a symlinked data_dir made setup chown a root directory to postgres."""
    c = config(tree)
    target = tree / "root-dir"
    target.mkdir(mode=0o755)
    as_postgres("ln", "-s", str(target), str(c.postgres.data_dir))
    with pytest.raises(pg.PgError, match="a symbolic link; postgres.data_dir must name the directory itself"):
        pg.ensure_data_dir(c.postgres)
    with pytest.raises(pg.PgError, match="symbolic link"):
        pg.init_replica(c, IPv4Address("10.88.0.12"))
    assert target.stat().st_uid == 0 and stat.S_IMODE(target.stat().st_mode) == 0o755


def test_a_data_dir_root_owns_or_cannot_be_made_by_postgres_gets_the_command_to_fix_it(tree: Path) -> None:
    c = config(tree, data=tree / "rootowned" / "data")
    (tree / "rootowned").mkdir(mode=0o755)
    with pytest.raises(pg.PgError, match=r"postgres may not create data there; create it as root: "
                                         r"install -d -o postgres -g postgres -m 0700 "):
        pg.ensure_data_dir(c.postgres)
    (tree / "rootowned" / "data").mkdir(mode=0o700)
    with pytest.raises(pg.PgError, match=r"owned by uid 0, not postgres; .*chown postgres: "):
        pg.ensure_data_dir(c.postgres)
    assert (tree / "rootowned" / "data").stat().st_uid == 0


def test_root_never_chowns_a_path_in_the_postgres_code() -> None:
    src = (Path(pg.__file__)).read_text()
    assert "chown(" not in src and "_write_owned" not in src


def test_the_replication_password_file_is_checked_like_the_key(tree: Path) -> None:
    c = config(tree)
    f = c.postgres.password_file
    assert pg.read_password(c.postgres) == "r" * 32
    f.chmod(0o644)
    with pytest.raises(pg.PgError, match=r"accessible by group or others \(mode 0644\); run 'chmod 600 "):
        pg.read_password(c.postgres)
    f.chmod(0o600)
    assert PGUSER is not None
    os.chown(f, PGUSER.pw_uid, PGUSER.pw_gid)
    with pytest.raises(pg.PgError, match=r"owned by uid \d+, not root: .* run 'chown root: "):
        pg.read_password(c.postgres)
    os.chown(f, 0, 0)
    f.unlink()
    os.mkfifo(f, 0o600)
    with pytest.raises(pg.PgError, match="not a regular file"):
        pg.read_password(c.postgres)


def test_tools_get_a_minimal_environment_without_dvpnds_secrets(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the container's DVPN_PG_REPLICATION_PASSWORD reached every tool dvpnd ran."""
    monkeypatch.setenv("DVPN_PG_REPLICATION_PASSWORD", "s3cret-in-the-environment")
    c = config(tree)
    out = pg.run(c.postgres, ["env"], "env")
    assert "s3cret" not in out and "PATH=" in out
