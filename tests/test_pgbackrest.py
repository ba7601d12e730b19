"""pgBackRest's configuration as dvpnd renders it (pure). The same files drive the real
pgBackRest against a real PostgreSQL in tests/lab/test_pgbackrest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvpnd.postgres.pgbackrest import (
    S3,
    PgBackRestConfError,
    Plan,
    Repo,
    archive_settings,
    backup_argv,
    render_conf,
    render_secrets,
    restore_argv,
)


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
