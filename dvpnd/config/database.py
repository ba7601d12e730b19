"""The database sections of the configuration: `postgres` (the spoke's server) and `backup`."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from dvpnd.config.fields import (
    Reader,
    abs_path,
    check_port,
    overlay_address,
    read_duration,
)
from dvpnd.config.model import (
    DEFAULT_PG_PORT,
    BackupConfig,
    OffsiteConfig,
    PgBackRestConfig,
    PostgresConfig,
)

PG_KEYS = {"enabled", "data_dir", "config_dir", "bin_dir", "port", "socket_dir", "os_user", "primary",
           "replication_user", "password_file", "slot"}


def postgres_section(r: Reader, top: dict[str, Any], is_hub: bool, name: str | None,
              network: IPv4Network | None, address: IPv4Address | None) -> PostgresConfig:
    m = r.section(top, ("postgres",), PG_KEYS)
    enabled = r.get(m, ("postgres", "enabled"), bool, default=bool(m))
    if not enabled:
        return PostgresConfig()
    if is_hub:
        r.error(("postgres",), "the hub runs no database (PostgreSQL lives on the spokes)")
        return PostgresConfig()
    data_dir = abs_path(r, m, ("postgres", "data_dir"), str(PostgresConfig.data_dir))
    primary = None
    if "primary" in m:
        primary = overlay_address(r, m, ("postgres", "primary"), network)
    else:
        r.error(("postgres", "primary"), "is required: the overlay address of the primary server "
                                         "(this node's own address on the primary)")
    ident = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
    default_slot = re.sub(r"[^a-z0-9_]", "_", (name or "dvpn").lower())
    return PostgresConfig(
        enabled=True,
        data_dir=data_dir,
        config_dir=abs_path(r, m, ("postgres", "config_dir"), str(data_dir)),
        bin_dir=abs_path(r, m, ("postgres", "bin_dir"), str(PostgresConfig.bin_dir)),
        port=r.get(m, ("postgres", "port"), int, default=DEFAULT_PG_PORT, check=check_port),
        socket_dir=abs_path(r, m, ("postgres", "socket_dir"), str(PostgresConfig.socket_dir)),
        os_user=r.get(m, ("postgres", "os_user"), str, default="postgres",
                      check=lambda v: None if re.match(r"^[a-z_][a-z0-9_\-]{0,31}\Z", v) else "is not a user name"),
        primary=primary,
        replication_user=r.get(m, ("postgres", "replication_user"), str, default="replicator",
                               check=lambda v: None if ident.match(v) else
                               "must be a lower-case SQL identifier (a-z, 0-9, _)"),
        password_file=abs_path(r, m, ("postgres", "password_file"), str(PostgresConfig.password_file)),
        slot=r.get(m, ("postgres", "slot"), str, default=default_slot,
                   check=lambda v: None if ident.match(v) else "must be a-z, 0-9 and _ (a replication slot name)"),
    )


# the keys of dvpnd's own pg_basebackup backups (before pgBackRest), refused by name so that an old
# configuration says what to change
RETIRED = {"dir", "interval", "keep_last", "keep_age", "compress", "verify", "timeout", "max_rate"}
BACKUP_KEYS = {"enabled", "tool", "pgbackrest"} | RETIRED
PGBR_KEYS = {"home", "stanza", "repo", "keep_full", "full_every", "diff_every", "check_every", "verify_every",
             "drill_every", "archive_timeout", "io_timeout", "process_max", "wal_alarm", "runner", "binary", "offsite"}
OFFSITE_KEYS = {"endpoint", "bucket", "region", "path", "uri_style", "ca_file", "host", "port", "keep_full",
                "credentials_file", "passphrase", "passphrase_file", "dstack_socket"}
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"^(?=.{{1,253}}\Z){LABEL}(\.{LABEL})*\Z")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
SIZE_RE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB|TiB)?\Z")
SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def check_host(v: str) -> str | None:
    return None if HOST_RE.match(v) else f"'{v[:80]}' is not a host name (no scheme, port or path)"


def read_size(r: Reader, m: dict[str, Any], kp: tuple[str, ...], default: int, lo: int) -> int:
    raw = r.get(m, kp, (int, str), default=default)
    got = SIZE_RE.match(raw.strip()) if isinstance(raw, str) else None
    if isinstance(raw, str) and not got:
        r.error(kp, f"'{raw[:40]}' is not a size (bytes, or a number with KiB, MiB, GiB or TiB)")
        return default
    value = int(got.group(1)) * SIZE_UNITS[got.group(2)] if got else int(raw)
    if value < lo:
        r.error(kp, f"must be at least {lo} bytes, got {value}")
        return default
    return value


def offsite_section(r: Reader, m: dict[str, Any]) -> OffsiteConfig | None:
    kp: tuple[str, ...] = ("backup", "pgbackrest", "offsite")
    o = r.section(m, kp, OFFSITE_KEYS)
    if not o:
        return None
    passphrase = r.get(o, kp + ("passphrase",), str, default="file",
                       check=lambda v: None if v in ("file", "dstack") else f"'{v}': file or dstack")
    pfile = abs_path(r, o, kp + ("passphrase_file",), "/") if "passphrase_file" in o else None
    if passphrase == "file" and pfile is None:
        r.error(kp + ("passphrase_file",), "is required with passphrase: file (a file of its own, mode 0600, "
                                           "holding at least 20 characters); or passphrase: dstack")
    if passphrase == "dstack" and pfile is not None:
        r.error(kp + ("passphrase_file",), "is not read with passphrase: dstack (the passphrase comes from GetKey)")
    path = r.get(o, kp + ("path",), str, default="/dvpn",
                 check=lambda v: None if v.startswith("/") and "\n" not in v and ".." not in v.split("/")
                 else f"'{v[:80]}' must be a path in the bucket starting with '/'")
    return OffsiteConfig(
        endpoint=r.get(o, kp + ("endpoint",), str, check=check_host) or "",
        bucket=r.get(o, kp + ("bucket",), str, check=lambda v: None if BUCKET_RE.match(v) else
                     f"'{v[:80]}' is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')") or "",
        region=r.get(o, kp + ("region",), str, check=lambda v: None if re.match(r"^[a-z0-9-]{1,40}\Z", v)
                     else f"'{v[:40]}' is not a region name (a-z, 0-9, '-'; Spaces: the data centre, e.g. nyc3)") or "",
        path=path,
        uri_style=r.get(o, kp + ("uri_style",), str, default="host",
                        check=lambda v: None if v in ("host", "path") else f"'{v}': host or path"),
        ca_file=abs_path(r, o, kp + ("ca_file",), "/") if "ca_file" in o else None,
        host=r.get(o, kp + ("host",), str, default=None, check=check_host),
        port=r.get(o, kp + ("port",), int, default=None, check=check_port),
        keep_full=r.get(o, kp + ("keep_full",), int, default=4,
                        check=lambda v: None if 1 <= v <= 9999999 else "must be at least 1"),
        credentials_file=abs_path(r, o, kp + ("credentials_file",), "/") if "credentials_file" in o else None,
        passphrase=passphrase,
        passphrase_file=pfile,
        dstack_socket=abs_path(r, o, kp + ("dstack_socket",), "/var/run/dstack.sock"),
    )


def pgbackrest_section(r: Reader, m: dict[str, Any], state_dir: Path) -> PgBackRestConfig:
    kp: tuple[str, ...] = ("backup", "pgbackrest")
    p = r.section(m, kp, PGBR_KEYS)
    home = abs_path(r, p, kp + ("home",), "/var/lib/dvpn-pgbackrest")
    if home == state_dir or state_dir in home.parents:
        r.error(kp + ("home",), f"'{home}' is inside the state directory {state_dir}, which is root's alone (0700): "
                                "the postgres user, which runs pgBackRest, could not reach it")
    full_every = read_duration(r, p, kp + ("full_every",), 7 * 86400, 3600, 366 * 86400)
    diff_every = read_duration(r, p, kp + ("diff_every",), 86400, 600, 366 * 86400)
    if diff_every >= full_every:
        r.error(kp + ("diff_every",), f"must be shorter than full_every ({full_every} s): a differential "
                                       "backup is taken between two full ones")
    return PgBackRestConfig(
        home=home,
        stanza=r.get(p, kp + ("stanza",), str, default="dvpn",
                     check=lambda v: None if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z", v)
                     else f"'{v[:40]}': letters, digits, '.', '_' and '-' (it names a directory of the repository)"),
        repo=abs_path(r, p, kp + ("repo",), str(home / "repo")),
        keep_full=r.get(p, kp + ("keep_full",), int, default=2,
                        check=lambda v: None if 1 <= v <= 9999999 else "must be at least 1"),
        full_every=full_every,
        diff_every=diff_every,
        check_every=read_duration(r, p, kp + ("check_every",), 3600, 60, 7 * 86400),
        verify_every=read_duration(r, p, kp + ("verify_every",), 7 * 86400, 3600, 366 * 86400),
        drill_every=read_duration(r, p, kp + ("drill_every",), 7 * 86400, 3600, 366 * 86400),
        archive_timeout=read_duration(r, p, kp + ("archive_timeout",), 60, 1, 3600),
        io_timeout=read_duration(r, p, kp + ("io_timeout",), 60, 1, 3600),
        process_max=r.get(p, kp + ("process_max",), int, default=2,
                          check=lambda v: None if 1 <= v <= 64 else "must be between 1 and 64"),
        wal_alarm=read_size(r, p, kp + ("wal_alarm",), 1 << 30, 16 << 20),
        runner=r.get(p, kp + ("runner",), str, default="auto",
                     check=lambda v: None if v in ("auto", "systemd", "direct") else f"'{v}': auto, systemd or direct"),
        binary=str(abs_path(r, p, kp + ("binary",), "/usr/bin/pgbackrest")),
        offsite=offsite_section(r, p),
    )


def backup_section(r: Reader, top: dict[str, Any], pg: PostgresConfig, state_dir: Path) -> BackupConfig:
    m = r.section(top, ("backup",), BACKUP_KEYS)
    enabled = r.get(m, ("backup", "enabled"), bool, default=pg.enabled)
    if not enabled:
        return BackupConfig()
    if not pg.enabled:
        r.error(("backup", "enabled"), "backups need the postgres section (enabled: true)")
        return BackupConfig()

    r.get(m, ("backup", "tool"), str, default="pgbackrest",
          check=lambda v: None if v == "pgbackrest" else
          f"'{v}': pgbackrest is the only tool (dvpnd's own pg_basebackup backups were replaced by it)")
    for key in sorted(RETIRED & set(m)):
        r.error(("backup", key), "was a setting of dvpnd's own pg_basebackup backups, which pgBackRest replaced: "
                                 "remove it (pgBackRest's settings go under backup.pgbackrest, see dvpnd.yaml(5))")
    return BackupConfig(enabled=True, pgbackrest=pgbackrest_section(r, m, state_dir))
