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
    check_rate,
    overlay_address,
    read_duration,
)
from dvpnd.config.model import (
    COMPRESSIONS,
    DEFAULT_PG_PORT,
    BackupConfig,
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


BACKUP_KEYS = {"enabled", "dir", "interval", "keep_last", "keep_age", "compress", "verify", "timeout", "max_rate"}


def backup_section(r: Reader, top: dict[str, Any], pg: PostgresConfig, state_dir: Path) -> BackupConfig:
    m = r.section(top, ("backup",), BACKUP_KEYS)
    enabled = r.get(m, ("backup", "enabled"), bool, default=pg.enabled)
    if not enabled:
        return BackupConfig()
    if not pg.enabled:
        r.error(("backup", "enabled"), "backups need the postgres section (enabled: true)")
        return BackupConfig()

    def check_compress(v: str) -> str | None:
        method, _, level = v.partition(":")
        if method not in COMPRESSIONS:
            return f"'{v}': the method must be one of {', '.join(COMPRESSIONS)}"
        if level and not (level.isdigit() and 1 <= int(level) <= 9 and method == "gzip"):
            return f"'{v}': the level after 'gzip:' must be 1 to 9 (none takes no level)"
        return None

    keep_last = r.get(m, ("backup", "keep_last"), int, default=7,
                      check=lambda v: None if 0 <= v <= 10000 else "must be between 0 and 10000")
    keep_age = read_duration(r, m, ("backup", "keep_age"), 0, 0, 10 * 365 * 86400)
    if keep_last == 0 and keep_age == 0:
        r.error(("backup", "keep_last"), "with keep_age 0 too, nothing but the newest backup would be kept; "
                                         "set keep_last or keep_age")
    return BackupConfig(
        enabled=True,
        dir=abs_path(r, m, ("backup", "dir"), str(state_dir / "backups")),
        interval=read_duration(r, m, ("backup", "interval"), 86400, 60, 30 * 86400),
        keep_last=keep_last,
        keep_age=keep_age,
        compress=r.get(m, ("backup", "compress"), str, default="gzip:1", check=check_compress),
        verify=r.get(m, ("backup", "verify"), bool, default=True),
        timeout=read_duration(r, m, ("backup", "timeout"), 6 * 3600, 60, 7 * 86400),
        max_rate=r.get(m, ("backup", "max_rate"), str, default=None, check=check_rate),
    )
