"""pgBackRest's configuration as dvpnd renders it (pure), and the same files driving the real
pgBackRest 2.45 against a real PostgreSQL 15 (as root: the server and pgBackRest run as the
postgres user, on a Unix socket only): a full backup into the local repository, WAL archived
asynchronously by the server's archive_command, and a point-in-time restore that brings a
dropped table back with every row, with archiving off in the copy."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from dvpnd.postgres.conf import render_auto_conf
from dvpnd.postgres.pgbackrest import (
    S3,
    PgBackRestConfError,
    Plan,
    Repo,
    archive_settings,
    backup_argv,
    base_argv,
    render_conf,
    render_secrets,
    restore_argv,
)

BIN = Path("/usr/lib/postgresql/15/bin")


def plan(home: Path, **kw: object) -> Plan:
    repos = (Repo(1, str(home / "repo"), 2),
             Repo(2, "/dvpn/spokes", 4, S3("s3.example.org", "bucket", "eu-1", "path", Path("/etc/dvpn/ca.pem")), True))
    return Plan(**{"stanza": "main", "pg_path": home / "data", "pg_port": 5432, "pg_socket": Path("/run/postgresql"),
                   "home": home / "pgbackrest", "repos": repos, **kw})  # type: ignore[arg-type]


def test_the_main_file_holds_no_secret_and_the_secrets_file_all_of_them(tmp_path: Path) -> None:
    p = plan(tmp_path)
    conf = render_conf(p)
    lines = conf.splitlines()
    assert f"lock-path={tmp_path}/pgbackrest/lock" in lines  # not /tmp: the unit's PrivateTmp splits it
    assert f"spool-path={tmp_path}/pgbackrest/spool" in lines and "archive-async=y" in lines
    assert "repo1-type=posix" in lines and "repo2-type=s3" in lines and "repo2-cipher-type=aes-256-cbc" in lines
    assert "repo2-s3-uri-style=path" in lines and "repo2-storage-ca-file=/etc/dvpn/ca.pem" in lines
    assert "repo1-cipher-type=aes-256-cbc" not in lines  # the local repository is the volume's
    assert "[main]" in lines and f"pg1-path={tmp_path}/data" in lines
    secrets = render_secrets(p, "AKID", "s3cr3t", "a passphrase long enough!")
    assert {"repo2-s3-key=AKID", "repo2-s3-key-secret=s3cr3t", "repo2-cipher-pass=a passphrase long enough!"} \
        <= set(secrets.splitlines())
    assert not any(x in conf for x in ("AKID", "s3cr3t", "passphrase long"))
    with pytest.raises(PgBackRestConfError, match="shorter than 20"):
        render_secrets(p, "AKID", "s3cr3t", "short")
    with pytest.raises(PgBackRestConfError, match="needs a key and a secret"):
        render_secrets(p, "", "", "a passphrase long enough!")
    # INI: a newline would add a setting of the value's choosing
    with pytest.raises(PgBackRestConfError, match="letters, digits"):
        render_conf(plan(tmp_path, stanza="main]\nrepo1-path=/elsewhere"))
    with pytest.raises(PgBackRestConfError, match="line break"):
        render_conf(plan(tmp_path, pg_path=Path("/data\nrepo1-path=/elsewhere")))


def test_command_lines_and_archive_settings(tmp_path: Path) -> None:
    p = plan(tmp_path)
    a = archive_settings(p)
    assert a["archive_mode"] == "on" and a["archive_timeout"] == "60"
    assert a["archive_command"].endswith(" --stanza=main archive-push %p")
    assert f"--config-include-path={tmp_path}/pgbackrest/conf.d" in a["archive_command"]
    assert backup_argv(p, "diff", 2)[-3:] == ["--repo=2", "--type=diff", "backup"]
    with pytest.raises(PgBackRestConfError):
        backup_argv(p, "weekly", 1)
    argv = restore_argv(p, tmp_path / "scratch", "2026-11-26 13:05:00+00", 1)
    assert "--archive-mode=off" in argv and "--type=time" in argv and argv[-1] == "restore"
    assert "--type=time" not in restore_argv(p, tmp_path / "scratch", "latest", 1)
    with pytest.raises(PgBackRestConfError, match="live data directory"):
        restore_argv(p, tmp_path / "data", "latest", 1)


# --- the real parts -------------------------------------------------------------------------

def _as_postgres(argv: list[str]) -> list[str]:
    u = pwd.getpwnam("postgres")
    return ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--init-groups", "--", *argv]


def _run(argv: list[str], timeout: float = 120) -> str:
    r = subprocess.run(_as_postgres(argv), capture_output=True, text=True, timeout=timeout, cwd="/")
    assert r.returncode == 0, f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _sql(sock: Path, port: int, sql: str) -> str:
    return _run([str(BIN / "psql"), "-X", "-h", str(sock), "-p", str(port), "-U", "postgres", "-d", "postgres",
                 "-Atqc", sql]).strip()


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (PostgreSQL and pgBackRest run as postgres)")
def test_a_dropped_table_comes_back_by_point_in_time_restore_from_the_local_repository() -> None:
    assert shutil.which("pgbackrest"), "pgbackrest is not installed (./dev installs Debian's)"
    home = Path(tempfile.mkdtemp(prefix="dvpn-pgbr-", dir="/var/tmp"))
    pids: list[Path] = []
    try:
        os.chmod(home, 0o755)
        u = pwd.getpwnam("postgres")
        for d in ("data", "restored", "sock", "logs", "repo", "pgbackrest", "pgbackrest/conf.d"):
            (home / d).mkdir(mode=0o700)
            os.chown(home / d, u.pw_uid, u.pw_gid)
        port = 55000 + os.getpid() % 1000
        p = Plan(stanza="lab", pg_path=home / "data", pg_port=port, pg_socket=home / "sock", home=home / "pgbackrest",
                 repos=(Repo(1, str(home / "repo"), 2),), process_max=2, archive_timeout=5)
        for path, text in ((p.conf, render_conf(p)), (p.secrets, render_secrets(p))):
            path.write_text(text)
            os.chown(path, u.pw_uid, u.pw_gid)
            path.chmod(0o600)
        _run([str(BIN / "initdb"), "-D", str(p.pg_path), "-A", "trust", "-U", "postgres", "--no-sync"])
        auto = p.pg_path / "postgresql.auto.conf"
        auto.write_text(render_auto_conf(auto.read_text(), {**archive_settings(p), "listen_addresses": "",
                                                            "unix_socket_directories": str(p.pg_socket),
                                                            "port": str(port)}))
        _run([str(BIN / "pg_ctl"), "-D", str(p.pg_path), "-w", "-l", str(home / "logs" / "data.log"), "start"])
        pids.append(p.pg_path)
        _run([*base_argv(p), "stanza-create"])
        _run([*base_argv(p), "check"])
        _run(backup_argv(p, "full", 1), timeout=300)
        _sql(p.pg_socket, port, "CREATE TABLE t AS SELECT g AS i FROM generate_series(1, 1000) g")
        time.sleep(1.1)
        target = _sql(p.pg_socket, port, "SELECT now()")
        time.sleep(1.1)
        _sql(p.pg_socket, port, "DROP TABLE t")
        _run([*base_argv(p), "check"])  # switches WAL and waits until it is archived
        info = _run([*base_argv(p), "info"])
        assert "full backup" in info and "wal archive min/max" in info, info
        _run([str(BIN / "pg_ctl"), "-D", str(p.pg_path), "-w", "-m", "fast", "stop"])
        pids.remove(p.pg_path)

        restored = home / "restored"
        _run(restore_argv(p, restored, target, 1), timeout=300)
        rauto = restored / "postgresql.auto.conf"
        rauto.write_text(render_auto_conf(rauto.read_text(), {"port": str(port + 1)}))
        _run([str(BIN / "pg_ctl"), "-D", str(restored), "-w", "-t", "120", "-l", str(home / "logs" / "restored.log"), "start"])
        pids.append(restored)
        deadline = time.monotonic() + 60
        while _sql(p.pg_socket, port + 1, "SELECT pg_is_in_recovery()") != "f":
            assert time.monotonic() < deadline, (home / "logs" / "restored.log").read_text()[-2000:]
            time.sleep(0.5)
        assert _sql(p.pg_socket, port + 1, "SELECT count(*), sum(i) FROM t") == "1000|500500"
        assert _sql(p.pg_socket, port + 1, "SHOW archive_mode") == "off"  # a copy never archives into the stanza
    finally:
        for running in pids:
            subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(running), "-w", "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)

