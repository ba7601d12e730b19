"""pgBackRest's configuration as dvpnd renders it (pure). The same files drive the real
pgBackRest against a real PostgreSQL in tests/lab/test_pgbackrest.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from dvpnd.postgres.pgbackrest import (
    S3,
    PgBackRestConfError,
    Plan,
    Repo,
    archive_settings,
    backup_argv,
    base_argv,
    copy_spool,
    drill_argv,
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
    assert "delta=y" not in lines  # (it would checksum every file of every backup)
    # pgBackRest's wait for a segment is never shorter than the store's io-timeout
    assert "archive-timeout=60" in render_conf(plan(tmp_path, archive_timeout=10)).splitlines()
    assert "archive-timeout=5" in render_conf(plan(tmp_path, archive_timeout=5, io_timeout=5)).splitlines()
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
    # over files: a delta restore; a copy never archives, the live directory (forced) archives as
    # configured, being the cluster again
    over = restore_argv(p, tmp_path / "old-copy", "latest", 1, delta=True)
    assert "--delta" in over and "--archive-mode=off" in over
    live = restore_argv(p, tmp_path / "data", "latest", 1, delta=True)
    assert "--delta" in live and "--archive-mode=off" not in live
    # pgBackRest's restore empties its spool's archive queues first: a copy (and a drill) gets a
    # spool of its own, one per copy, never the live one a running primary's archive-push waits
    # on; the live directory restored over (its server stopped) keeps the configured spool
    spools = {a for argv in (argv, over, restore_argv(p, tmp_path / "other", "latest", 1),
                             drill_argv(base_argv(p), tmp_path / "drill" / "data", tmp_path / "drill" / "spool"))
              for a in argv if a.startswith("--spool-path=")}
    assert len(spools) == 4 and f"--spool-path={p.home / 'spool'}" not in spools, spools
    assert f"--spool-path={copy_spool(p, tmp_path / 'scratch')}" in argv
    assert f"--spool-path={tmp_path / 'drill' / 'spool'}" in spools
    assert not any(a.startswith("--spool-path=") for a in live)


# --- backup.pgbackrest: the config keys, the runner's operations, the secrets, the status

from dvpnd.config.load import load_config  # noqa: E402
from dvpnd.postgres import pgbr_keys, pgbr_run  # noqa: E402
from dvpnd.postgres.pgbackrest import OPS, op_argvs, plan_for, render_runner  # noqa: E402
from dvpnd.postgres.pgbr_status import RETRY, behind, next_op, read_info, segment_number  # noqa: E402

from .test_config import SPOKE, problems, write  # noqa: E402

PGBR = SPOKE + """\
postgres:
  primary: 10.88.0.11
  data_dir: /srv/pg/data
  socket_dir: /srv/pg/run
backup:
  tool: pgbackrest
  pgbackrest:
    home: /srv/dvpn/pgbackrest
    stanza: shop
    full_every: 7d
    diff_every: 1d
    wal_alarm: 2GiB
    offsite:
      endpoint: nyc3.digitaloceanspaces.com
      bucket: shop-backups
      region: nyc3
      credentials_file: /etc/dvpn/offsite.env
      passphrase_file: /etc/dvpn/offsite.pass
"""


def test_pgbackrest_keys_make_the_plan(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, PGBR))
    b = c.backup.pgbackrest
    assert c.backup.enabled and b is not None
    assert (b.stanza, b.full_every, b.diff_every, b.wal_alarm, b.keep_full) == ("shop", 7 * 86400, 86400, 2 << 30, 2)
    assert b.repo == Path("/srv/dvpn/pgbackrest/repo") and b.runner == "auto"
    p = plan_for(c)
    assert p.stanza == "shop" and p.pg_path == Path("/srv/pg/data") and p.pg_socket == Path("/srv/pg/run")
    assert [r.index for r in p.repos] == [1, 2] and p.repos[1].encrypted and p.repos[1].s3 is not None
    assert p.repos[1].s3.endpoint == "nyc3.digitaloceanspaces.com" and p.repos[1].path == "/dvpn"
    conf = render_conf(p)
    assert "repo2-s3-bucket=shop-backups" in conf and "repo2-cipher-type=aes-256-cbc" in conf
    # with no backup section, a database's backups are pgBackRest's with the defaults (local only)
    d = load_config(write(tmp_path, PGBR.split("backup:")[0])).backup
    assert d.enabled and d.pgbackrest is not None and d.pgbackrest.offsite is None


@pytest.mark.parametrize("change, message", [
    (("tool: pgbackrest", "tool: barman"), "backup.tool: 'barman': pgbackrest is the only tool"),
    (("  pgbackrest:\n", "  keep_last: 3\n  pgbackrest:\n"), "backup.keep_last: was a setting of dvpnd's own "
                                                           "pg_basebackup backups"),
    (("stanza: shop", "stanza: ../etc"), "backup.pgbackrest.stanza: '../etc': letters, digits"),
    (("diff_every: 1d", "diff_every: 8d"), "backup.pgbackrest.diff_every: must be shorter than full_every"),
    (("wal_alarm: 2GiB", "wal_alarm: lots"), "backup.pgbackrest.wal_alarm: 'lots' is not a size"),
    (("wal_alarm: 2GiB", "wal_alarm: 1MiB"), "backup.pgbackrest.wal_alarm: must be at least 16777216 bytes"),
    (("endpoint: nyc3.digitaloceanspaces.com", "endpoint: https://nyc3.digitaloceanspaces.com"),
     "backup.pgbackrest.offsite.endpoint: 'https://nyc3.digitaloceanspaces.com' is not a host name"),
    (("bucket: shop-backups", "bucket: Shop_Backups"), "backup.pgbackrest.offsite.bucket: 'Shop_Backups' is not a bucket"),
    (("      passphrase_file: /etc/dvpn/offsite.pass\n", ""),
     "backup.pgbackrest.offsite.passphrase_file: is required with passphrase: file"),
    (("      passphrase_file: /etc/dvpn/offsite.pass\n", "      passphrase_file: /etc/p\n      passphrase: dstack\n"),
     "backup.pgbackrest.offsite.passphrase_file: is not read with passphrase: dstack"),
    (("region: nyc3", 'region: "nyc3\\nrepo2-path=/x"'), "backup.pgbackrest.offsite.region: 'nyc3\nrepo2-path=/x' is not"),
    (("    stanza: shop\n", "    stanza: shop\n    runner: sudo\n"), "backup.pgbackrest.runner: 'sudo': auto, systemd or direct"),
    (("    stanza: shop\n", "    stanza: shop\n    keep_ful: 3\n"),
     "backup.pgbackrest.keep_ful: unknown key (did you mean 'keep_full'?)"),
    (("home: /srv/dvpn/pgbackrest", "home: /var/lib/dvpn/pgbackrest"),
     "backup.pgbackrest.home: '/var/lib/dvpn/pgbackrest' is inside the state directory /var/lib/dvpn"),
    (("    stanza: shop\n", "    stanza: shop\n    io_timeout: 0s\n"), "backup.pgbackrest.io_timeout: "),
])
def test_bad_pgbackrest_keys_are_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = PGBR.replace(*change)
    assert text != PGBR
    found = problems(tmp_path, text)
    assert any(message in p for p in found), found


def test_the_runner_runs_only_its_own_operations(tmp_path: Path) -> None:
    base = ["/usr/bin/pgbackrest", "--config=/h/pgbackrest.conf", "--stanza=shop"]
    assert op_argvs(base, (1, 2), "backup-full") == [[*base, "--repo=1", "--type=full", "backup"],
                                                     [*base, "--repo=2", "--type=full", "backup"]]
    assert op_argvs(base, (1, 2), "check") == [[*base, "check"]]
    assert op_argvs(base, (1,), "info") == [[*base, "--output=json", "info"]]
    assert op_argvs(base, (1, 2), "verify") == [[*base, "--repo=1", "verify"], [*base, "--repo=2", "verify"]]
    with pytest.raises(PgBackRestConfError, match="operation 'stanza-delete'"):
        op_argvs(base, (1,), "stanza-delete")
    assert "restore" not in OPS and "stanza-delete" not in OPS
    assert op_argvs(base, (1, 2), "drill") == []  # (the runner's own steps)
    # runner.json: what dvpnd writes is what the runner accepts; anything else is refused
    c = load_config(write(tmp_path, PGBR))
    home = tmp_path / "home"
    home.mkdir()
    (home / "runner.json").write_text(render_runner(plan_for(c), "/usr/bin/pgbackrest"))
    argv, repos = pgbr_run.load_runner(home)
    assert argv[0] == "/usr/bin/pgbackrest" and repos == (1, 2) and "--stanza=shop" in argv
    for bad in ('{"argv": ["sh", "-c"], "repos": [1]}', '{"argv": ["/bin/sh", "-c", "x"], "repos": [1]}',
                '{"argv": ["/usr/bin/pgbackrest"], "repos": [9]}'):
        (home / "runner.json").write_text(bad)
        with pytest.raises(SystemExit):
            pgbr_run.load_runner(home)


def test_offsite_credentials_and_passphrases(tmp_path: Path) -> None:
    assert pgbr_keys.parse_credentials("# spaces\nexport AWS_ACCESS_KEY_ID=DO00X\nAWS_SECRET_ACCESS_KEY='s/e+c'\n",
                                       "f") == ("DO00X", "s/e+c")
    with pytest.raises(pgbr_keys.SecretError, match="f: no AWS_SECRET_ACCESS_KEY"):
        pgbr_keys.parse_credentials("AWS_ACCESS_KEY_ID=DO00X\n", "f")
    with pytest.raises(pgbr_keys.SecretError, match="f, line 1: not NAME=value"):
        pgbr_keys.parse_credentials("AWS_ACCESS_KEY_ID DO00X\n", "f")
    env = tmp_path / "offsite.env"
    env.write_text("AWS_ACCESS_KEY_ID=K\nAWS_SECRET_ACCESS_KEY=S\n")
    env.chmod(0o644)
    c = load_config(write(tmp_path, PGBR.replace("/etc/dvpn/offsite.env", str(env))))
    assert c.backup.pgbackrest is not None and c.backup.pgbackrest.offsite is not None
    with pytest.raises(pgbr_keys.SecretError, match="mode 0644; a secret must be 0600") as e:
        pgbr_keys.read_credentials(c.backup.pgbackrest.offsite)
    assert "S" not in str(e.value).replace("SecretError", "").split("mode")[1]  # (the secret is never shown)
    env.chmod(0o600)
    assert pgbr_keys.read_credentials(c.backup.pgbackrest.offsite) == ("K", "S")
    pw = tmp_path / "pass"
    pw.write_text("short\n")
    pw.chmod(0o600)
    with pytest.raises(pgbr_keys.SecretError, match="shorter than 20"):
        pgbr_keys.passphrase_from_file(pw)
    # Dstack: the same app key gives the same passphrase, another stanza or key another one
    k = "11" * 32
    p1 = pgbr_keys.passphrase_from_key(k, "shop")
    assert p1 == pgbr_keys.passphrase_from_key(k, "shop") and len(p1) == 64
    assert p1 != pgbr_keys.passphrase_from_key(k, "other") and p1 != pgbr_keys.passphrase_from_key("22" * 32, "shop")
    assert pgbr_keys.parse_getkey(b'{"key": "abcd", "signature_chain": []}', "agent") == "abcd"
    for body in (b"<html>", b'{"error": "x"}', b"[]"):
        with pytest.raises(pgbr_keys.SecretError, match="agent"):
            pgbr_keys.parse_getkey(body, "agent")
    with pytest.raises(pgbr_keys.SecretError, match="not hex"):
        pgbr_keys.passphrase_from_key("zz" * 32, "shop")


INFO = [{"name": "shop", "status": {"code": 0, "message": "ok"},
         "repo": [{"key": 1, "status": {"code": 0, "message": "ok"}, "cipher": "none"},
                  {"key": 2, "status": {"code": 99, "message": "other"}, "cipher": "aes-256-cbc"}],
         "backup": [
             {"type": "full", "timestamp": {"start": 100, "stop": 150}, "database": {"id": 1, "repo-key": 1},
              "info": {"size": 5000, "repository": {"size": 900, "delta": 900}}},
             {"type": "diff", "timestamp": {"start": 200, "stop": 210}, "database": {"id": 1, "repo-key": 1},
              "info": {"size": 5000, "repository": {"size": 90, "delta": 90}}},
             {"type": "full", "timestamp": {"start": 300, "stop": 330}, "database": {"id": 1, "repo-key": 2},
              "error": True},
             {"type": "full", "timestamp": {"start": 100, "stop": 160}, "database": {"id": 1, "repo-key": 2}},
             {"type": "full", "timestamp": {"stop": "soon"}, "database": {"repo-key": 1}},
             "junk"],
         "archive": [{"id": "15-1", "min": "000000010000000000000001", "max": "000000010000000100000003",
                      "database": {"id": 1, "repo-key": 1}},
                     {"id": "15-1", "min": "000000010000000000000001", "max": "0000000100000000000000FE",
                      "database": {"id": 1, "repo-key": 2}}]}]


def test_pgbackrest_info_becomes_the_status() -> None:
    v = read_info(INFO, "shop", (1, 2))
    assert (v[1].ok, v[1].last_full, v[1].last_diff, v[1].backups, v[1].last_size) == (True, 150, 210, 2, 90)
    assert v[1].wal_max == "000000010000000100000003"
    # a backup marked in error is not counted; the offsite repository's own trouble is shown
    assert (v[2].ok, v[2].status, v[2].last_full, v[2].backups) == (False, "other", 160, 1)
    assert behind(v[1].wal_max, v[2].wal_max) == 5  # 0x1_03 - 0x0_FE segments
    assert behind(v[1].wal_max, v[1].wal_max) == 0 and behind(None, v[2].wal_max) is None
    assert behind("000000010000000000000003", None) == 4
    assert segment_number("000000020000000A00000010") == (2, 10 * 256 + 16) and segment_number("x") is None
    assert read_info({"not": "a list"}, "shop", (1,))[1].ok is False
    assert read_info(INFO, "other", (1,))[1].status == "no such stanza in pgBackRest's info"
    junk = json.loads(json.dumps(INFO))
    junk[0]["repo"][1]["status"]["message"] = "[FormatError] unable to load info file:\nFormatError: at line 1: \x1b\u00e9" * 9
    msg = read_info(junk, "shop", (1, 2))[2].status
    assert msg.startswith("[FormatError] unable to load info file: FormatError: at line 1: ??")
    assert len(msg) == 200 and all(" " <= c <= "~" for c in msg)


def test_the_schedule(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, PGBR))
    b = c.backup.pgbackrest
    assert b is not None
    day = 86400
    assert next_op(b, 1000, False, {}, {}) is None  # a replica never writes to the stanza
    assert next_op(b, 1000, True, {}, {}) == "stanza-create"
    assert next_op(b, 1000, True, {}, {"stanza-create": 900}) is None  # failed: waits before trying again
    assert next_op(b, 1600, True, {}, {"stanza-create": 900}) == "stanza-create"
    t = 10 * day
    ok = {"stanza-create": t}
    assert next_op(b, t, True, ok, {}) == "backup-full"
    ok["backup-full"] = t
    assert next_op(b, t, True, ok, {}) == "check"
    assert next_op(b, t, True, {**ok, "check": t}, {}) == "verify"
    assert next_op(b, t, True, {**ok, "check": t, "verify": t}, {}) == "drill"  # a restore drill
    ok.update(check=t, verify=t, drill=t)
    assert next_op(b, t + 3599, True, ok, {}) is None
    assert next_op(b, t + 3600, True, ok, {}) == "check"  # check_every: 1 h
    ok["check"] = t + day
    assert next_op(b, t + day, True, ok, {}) == "backup-diff"
    ok["backup-diff"] = t + day
    assert next_op(b, t + 7 * day, True, {**ok, "check": t + 7 * day}, {}) == "backup-full"
    # a failed backup is tried again after a while, not at every tick
    assert next_op(b, t + 7 * day + 10, True, ok, {"backup-full": t + 7 * day}) == "check"
    assert next_op(b, t + 7 * day + 10, True, {**ok, "check": t + 7 * day, "verify": t + 7 * day, "drill": t + 7 * day},
                   {"backup-full": t + 7 * day}) is None
    assert next_op(b, t + 7 * day + RETRY, True, ok, {"backup-full": t + 7 * day}) == "backup-full"


def test_pg_setup_writes_the_archive_settings_for_pgbackrest(tmp_path: Path) -> None:
    from dvpnd.postgres.conf import render_server_conf

    text = render_server_conf(load_config(write(tmp_path, PGBR)))
    assert "archive_mode = 'on'" in text and "archive_timeout = '60'" in text
    assert ("archive_command = '/usr/bin/pgbackrest --config=/srv/dvpn/pgbackrest/pgbackrest.conf "
            "--config-include-path=/srv/dvpn/pgbackrest/conf.d --stanza=shop archive-push %p'") in text
    # with backups off, nothing is archived
    off = PGBR.split("backup:")[0] + "backup:\n  enabled: false\n"
    assert "archive_command" not in render_server_conf(load_config(write(tmp_path, off)))


def test_status_and_metrics_show_the_repositories_and_the_offsite_lag() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from dvpnd.daemon.status import BackRestView, Snapshot, render_detail, render_status
    from dvpnd.serve.metrics import collect_pgbackrest

    repos = tuple(read_info(INFO, "shop", (1, 2)).values())
    br = BackRestView(stanza="shop", running=None, repos=repos, offsite_behind=5, wal_bytes=3 << 30, wal_waiting=190,
                      last_ok=(("backup-full", 150.0), ("check", 220.0)),
                      problems=("offsite behind by 5 WAL segments", "pg_wal holds 3072 MiB (alarm at 1024 MiB)"),
                      primary=True, overdue_after=2 * 86400, since=100.0)
    snap = Snapshot(taken=1000.0, node="spoke-a", role="spoke", interface="wg0", overlay_ip="10.88.0.11",
                    backend="userspace", interface_up=True, pgbackrest=br)
    public = render_status(snap, 1000.0, 180)
    assert public["backup"] == {"last_success": "1970-01-01T00:03:30.000Z", "age_sec": 790, "overdue": False}
    assert public["state"] == "degraded"
    assert render_status(snap, 210 + 2 * 86400 + 1, 180)["backup"]["overdue"] is True
    # the public page names no repository, endpoint or error
    assert "offsite" not in json.dumps(public) and "nyc3" not in json.dumps(public)
    detail = render_detail(snap, 1000.0, 180)["backup"]
    assert detail["tool"] == "pgbackrest" and [r["name"] for r in detail["repos"]] == ["local", "offsite"]
    assert detail["offsite_behind_segments"] == 5 and "backup: offsite behind by 5 WAL segments" in \
        render_detail(snap, 1000.0, 180)["problems"]
    # what dvpnctl pg status prints from it (the detailed status, through the control socket)
    from dvpnd.cli.db import format_pgbackrest

    text = "\n".join(format_pgbackrest(json.loads(json.dumps(detail))))
    assert "local    ok: 2 backups, newest full 1970-01-01T00:02:30.000Z" in text and "last 90" in text, text
    assert "offsite  other: 1 backups" in text and "offsite behind by 5 WAL segments" in text, text
    assert "problem: pg_wal holds 3072 MiB" in text and "190 segments waiting" in text, text

    class One:
        def collect(self) -> Any:
            return collect_pgbackrest(snap, 1000.0)

    reg = CollectorRegistry()
    reg.register(One())  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    assert 'dvpnd_pgbackrest_repo_ok{repo="offsite"} 0.0' in text and 'dvpnd_pgbackrest_backups{repo="local"} 2.0' in text
    assert "dvpnd_pgbackrest_offsite_behind_segments 5.0" in text and "dvpnd_backup_overdue 0.0" in text
    assert 'dvpnd_pgbackrest_last_ok_timestamp_seconds{op="check"} 220.0' in text


def test_a_restore_names_its_moment_with_a_zone_and_never_the_live_directory(tmp_path: Path) -> None:
    from dvpnd.postgres.pgbr_restore import RestoreError, parse_target, restore

    assert parse_target("latest") == "latest"
    assert parse_target("2026-11-26T13:05:00Z") == "2026-11-26 13:05:00+00"
    assert parse_target("2026-11-26 13:05:00.25+01:00") == "2026-11-26 13:05:00.25+01:00"
    for bad in ("2026-11-26 13:05:00", "yesterday", "2026-11-26 13:05:00+00; rm -rf /"):
        with pytest.raises(RestoreError, match="a moment with its time zone"):
            parse_target(bad)
    c = load_config(write(tmp_path, PGBR))
    with pytest.raises(RestoreError, match="is the live data directory"):
        restore(c, Path("/srv/pg/data"), "latest", "local")
    with pytest.raises(RestoreError, match="--from elsewhere"):
        restore(c, tmp_path / "new", "latest", "elsewhere")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "PG_VERSION").write_text("15\n")
    with pytest.raises(RestoreError, match="not an empty directory"):
        restore(c, busy, "latest", "local")


def test_dvpnctl_backup_restore_refuses_a_name_and_the_retired_commands(tmp_path: Path, capsys: Any) -> None:
    """`backup restore --to TIME|latest --target DIR [--from] [--force]`, no backup's name; `backup
    list` and `backup verify` (dvpnd's own backups) are gone: argparse names the commands there
    are. Bad input changes nothing: no directory made, nothing written over."""
    from dvpnd.cli.main import main

    new = write(tmp_path, PGBR, "new.yaml")
    for gone in ("list", "verify"):
        with pytest.raises(SystemExit) as e:
            main(["backup", gone, "--config", str(new)])
        assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["backup", "restore", "x", "--config", str(new), "--target", str(tmp_path / "r")])
    assert "unrecognized arguments: x" in capsys.readouterr().err
    assert main(["backup", "restore", "--config", str(new), "--target", str(tmp_path / "r"), "--to", "noon"]) == 2
    assert "--to 'noon': 'latest' or a moment with its time zone" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    # a directory that holds files, and the live data directory: refused without --force
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    assert main(["backup", "restore", "--config", str(new), "--target", str(full)]) == 1
    assert "not an empty directory" in capsys.readouterr().err and (full / "keep").read_text() == "mine"
    assert main(["backup", "restore", "--config", str(new), "--target", "/srv/pg/data"]) == 1
    assert "is the live data directory" in capsys.readouterr().err


def test_a_result_file_is_read_as_untrusted_input(tmp_path: Path) -> None:
    """results/OP.json is the postgres user's: anything but a well-formed result for that very
    operation is no result (never a success), and a link or an oversized file is not followed."""
    from dvpnd.postgres.pgbr_home import read_result

    res = tmp_path / "results"
    res.mkdir()
    good = {"op": "check", "started": 1.0, "finished": 2.0, "ok": True, "steps": []}
    (res / "check.json").write_text(json.dumps(good))
    assert read_result(tmp_path, "check") == good
    for bad in ("{", "[]", json.dumps({**good, "op": "backup-full"}), json.dumps({**good, "started": "yesterday"}),
                json.dumps({**good, "steps": "none"}), "\x00" * 100):
        (res / "check.json").write_text(bad)
        assert read_result(tmp_path, "check") is None, bad
    (res / "check.json").unlink()
    (tmp_path / "elsewhere.json").write_text(json.dumps(good))
    (res / "check.json").symlink_to(tmp_path / "elsewhere.json")
    assert read_result(tmp_path, "check") is None  # a link planted by the postgres user
    (res / "check.json").unlink()
    with open(res / "check.json", "wb") as f:
        f.truncate(17 << 20)  # larger than any result: refused unread
    assert read_result(tmp_path, "check") is None
    assert read_result(tmp_path, "verify") is None  # none yet


def test_the_error_shown_is_pgbackrests_error_line() -> None:
    from dvpnd.postgres.pgbr_status import error_line

    http = ("ERROR: [039]: HTTP request failed with 403 (Forbidden):\n"
            "            *** Path/Query ***:\n            PUT /dvpn/archive/shop/archive.info\n"
            "            *** Response Headers ***:\n            x-amzn-requestid: ZO5gNTX\n")
    assert error_line(http) == ("ERROR: [039]: HTTP request failed with 403 (Forbidden): the store refused the "
                                "offsite key pair (credentials_file) or its rights")
    assert error_line(http + "    *** Response Content ***:\n    <Error><Code>SignatureDoesNotMatch</Code></Error>") \
        == "ERROR: [039]: HTTP request failed with 403 (Forbidden): SignatureDoesNotMatch"
    assert error_line("P00  ERROR: [047]: unable to create path: [28] No space left on device\n") \
        == "P00  ERROR: [047]: unable to create path: [28] No space left on device"
    assert error_line("WARN: something\nlast words\n\n") == "last words"
    assert error_line("") == "" and len(error_line("x" * 2000)) == 500
    assert error_line("ERROR: [029]: unable to load info file 'archive.info':\n"
                      "FormatError: key/value found outside of section at line 1: \u031e\tg:\x01\n") \
        == ("ERROR: [029]: unable to load info file 'archive.info': FormatError: key/value found outside of "
            "section (what a wrong cipher passphrase reads)")


def test_a_backup_counts_as_done_only_when_every_repository_has_it(tmp_path: Path, monkeypatch: Any) -> None:
    """One that reached the local repository only (the store refused it) is not a done backup:
    the schedule tries it again rather than waiting full_every."""
    import asyncio

    from dvpnd.postgres import pgbr_home
    from dvpnd.postgres.pgbr_supervisor import BackRest

    br = BackRest(load_config(write(tmp_path, PGBR)), environ={})
    info: list[Any] = []
    monkeypatch.setattr(pgbr_home, "read_result", lambda home, op: {"info": info})

    async def ran(op: str) -> bool:
        return True

    monkeypatch.setattr(br, "_run", ran)
    only_local = json.loads(json.dumps(INFO))
    only_local[0]["backup"] = [b for b in only_local[0]["backup"] if not isinstance(b, dict)
                               or b.get("database", {}).get("repo-key") == 1]
    info[:] = only_local
    asyncio.run(br.refresh())
    assert br.repos[1].last_full == 150 and br.repos[2].last_full is None
    assert "backup-full" not in br.last_ok and "backup-diff" not in br.last_ok
    info[:] = INFO
    asyncio.run(br.refresh())
    assert br.last_ok["backup-full"] == 150 and br.last_ok["backup-diff"] == 160  # (the older of the two)


@pytest.mark.process
def test_a_run_refused_for_a_held_lock_is_tried_again(tmp_path: Path) -> None:
    """pgBackRest exits 50 when another of its processes holds the lock: run again each second
    for a while (a stanza-create right after a promotion meets archive-push at work)."""
    from dvpnd.postgres.pgbr_run import _step

    count = tmp_path / "count"
    prog = tmp_path / "pgbackrest"
    prog.write_text(f"#!/bin/sh\necho x >> {count}\n[ $(wc -l < {count}) -ge 2 ] && exit 0\n"
                    "echo 'ERROR: [050]: unable to acquire lock' >&2; exit 50\n")
    prog.chmod(0o755)
    step, _ = _step([str(prog), "stanza-create"], 30)
    assert step["rc"] == 0 and len(count.read_text().split()) == 2
    count.unlink()
    step, _ = _step([str(prog), "stanza-create"], 30, lock_wait=0)
    assert step["rc"] == 50 and "unable to acquire lock" in step["stderr"]  # (no wait: said at once)


@pytest.mark.process
def test_pgbackrest_dies_with_the_runner(tmp_path: Path) -> None:
    """dvpnd kills the runner when it stops mid-operation (lab down, a restart): the pgBackRest it
    started must not go on alone holding the stanza's lock (found in the lab: a verify outlived
    dvpnd and the lab)."""
    import signal
    import subprocess
    import sys
    import time

    pidfile = tmp_path / "child.pid"
    prog = tmp_path / "pgbackrest"
    prog.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 300\n")
    prog.chmod(0o755)
    runner = subprocess.Popen([sys.executable, "-c", "import sys; from dvpnd.postgres.pgbr_run import _step; "
                               "_step([sys.argv[1], 'verify'], 600)", str(prog)])
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline and runner.poll() is None, "the runner did not start its child"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and "Z" not in Path(f"/proc/{child}/stat").read_text().split()[2]:
            assert time.monotonic() < deadline, "pgBackRest outlived its runner"
            time.sleep(0.05)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        if pidfile.exists() and pidfile.read_text().strip():
            try:  # (where the test fails: what it started ends here, by its PID)
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_archive_push_errors_and_the_runners_wal_count_are_read_as_untrusted_input(tmp_path: Path) -> None:
    """The spool's `.error` files and the info result's `wal` are the postgres user's: a link, a
    FIFO, a huge or binary file, a malformed count are no answer, never a crash nor a hang."""
    import os

    from dvpnd.postgres.pgbr_supervisor import archive_error, runner_wal

    out = tmp_path / "spool" / "archive" / "shop" / "out"
    assert archive_error(tmp_path / "spool", "shop") is None  # (no spool yet)
    out.mkdir(parents=True)
    assert archive_error(tmp_path / "spool", "shop") is None  # (nothing failed)
    (out / "000000010000000000000003.error").write_text("28\nunable to write: [28] No space left on device\n")
    assert archive_error(tmp_path / "spool", "shop") == "unable to write: [28] No space left on device"
    (out / "000000010000000000000003.error").unlink()
    (tmp_path / "secret").write_text("root's own\n")
    (out / "a.error").symlink_to(tmp_path / "secret")
    os.mkfifo(out / "b.error")
    assert archive_error(tmp_path / "spool", "shop") is None  # (a link and a FIFO are not followed nor opened)
    (out / "a.error").unlink()
    (out / "b.error").unlink()
    with open(out / "c.error", "wb") as f:
        f.write(b"\x1b[31m\xff\x00" + b"x" * (5 << 20))
    text = archive_error(tmp_path / "spool", "shop")
    assert text is not None and len(text) <= 600 and text.startswith("?[31m??") and "\x1b" not in text
    assert runner_wal({"wal": [16 << 20, 3]}) == (16 << 20, 3)
    for bad in ({}, {"wal": "3"}, {"wal": [1]}, {"wal": [1, 2, 3]}, {"wal": [-1, 2]}, {"wal": [1.5, 2]},
                {"wal": [True, 2]}, {"wal": [10 ** 30, 2]}, {"wal": None}):
        assert runner_wal(bad) is None, bad
