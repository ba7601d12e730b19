"""What the local PostgreSQL server's dvpn-managed files should say (pure).

dvpn owns three small files beside the server's configuration and one include line in
postgresql.conf; everything else in the cluster's configuration stays the operator's:

    dvpn.conf         listen on the overlay address and the local socket only, WAL for replicas
    dvpn_hba.conf     local: peer; other spokes' overlay addresses: scram-sha-256; the hub: rejected
    dvpn_ident.conf   lets root (dvpnd, dvpnctl) connect as the postgres superuser over the socket
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from dvpnd.config.model import Config, PostgresConfig

INCLUDE_LINE = "include_if_exists = 'dvpn.conf'  # added by dvpnctl pg setup"
CONF_NAME = "dvpn.conf"
HBA_NAME = "dvpn_hba.conf"
IDENT_NAME = "dvpn_ident.conf"
HEADER = "# Written by dvpnctl from {src}; edit that file and run 'dvpnctl pg setup' again.\n"


def _q(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def render_server_conf(config: Config) -> str:
    pg = config.postgres
    d = f"{pg.config_dir}/"
    lines = [
        HEADER.format(src=config.path),
        f"listen_addresses = {_q(str(config.address))}  # the overlay only; the socket for local use",
        f"port = {pg.port}",
        f"unix_socket_directories = {_q(str(pg.socket_dir))}",
        f"hba_file = {_q(d + HBA_NAME)}",
        f"ident_file = {_q(d + IDENT_NAME)}",
        "password_encryption = 'scram-sha-256'",
        "wal_level = replica",
        "max_wal_senders = 10",
        "max_replication_slots = 10",
        "hot_standby = on",
        "hot_standby_feedback = on",
        "# a replica gone for good must not fill the primary's disk through its slot",
        "max_slot_wal_keep_size = '4GB'",
        "wal_keep_size = '128MB'",
        "recovery_target_timeline = 'latest'",
    ]
    if config.backup.enabled and config.backup.pgbackrest is not None:
        from dvpnd.postgres.pgbackrest import archive_settings, plan_for

        lines.append("# WAL to pgBackRest (dvpnd's backups); 'on' archives on whichever node is primary,")
        lines.append("# so a promoted replica takes over (a change of archive_mode needs a restart)")
        for key, value in archive_settings(plan_for(config), config.backup.pgbackrest.binary).items():
            lines.append(f"{key} = {_q(value)}")
    lines.append("")
    return "\n".join(lines)


def render_hba(config: Config) -> str:
    pg = config.postgres
    net: IPv4Network = config.network
    hub: IPv4Address = config.hub_address
    return HEADER.format(src=config.path) + "\n".join([
        "# TYPE  DATABASE     USER        ADDRESS            METHOD",
        "local   all          postgres                       peer map=dvpn",
        "local   replication  postgres                       peer map=dvpn",
        "local   all          all                            peer",
        f"host    all          all         {hub}/32       reject  # the hub never reaches the database",
        f"host    all          all         {config.address}/32  reject  # ourselves: use the socket",
        f"host    replication  {pg.replication_user:<11} {net}   scram-sha-256",
        f"host    all          all         {net}   scram-sha-256",
        "",
    ])


def render_ident(config: Config) -> str:
    user = config.postgres.os_user
    return HEADER.format(src=config.path) + "\n".join([
        "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME",
        "dvpn       root             postgres",
        f"dvpn       {user:<16} postgres",
        "",
    ])


def with_include(postgresql_conf: str) -> str:
    """postgresql.conf with dvpn's include line at the end (unchanged if it is there)."""
    if INCLUDE_LINE in postgresql_conf.splitlines():
        return postgresql_conf
    sep = "" if postgresql_conf.endswith("\n") or not postgresql_conf else "\n"
    return postgresql_conf + sep + INCLUDE_LINE + "\n"


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def render_pgpass(pg: PostgresConfig, password: str) -> str:
    """A pgpass line for the replication user on any host of the overlay."""
    return f"*:{pg.port}:*:{_pgpass_field(pg.replication_user)}:{_pgpass_field(password)}\n"


def _conninfo_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_primary_conninfo(config: Config, primary: IPv4Address) -> str:
    pg = config.postgres
    parts = {
        "host": str(primary),
        "port": str(pg.port),
        "user": pg.replication_user,
        "passfile": str(pg.passfile),
        "application_name": config.name,
        "connect_timeout": "5",
        "keepalives_idle": "10",
    }
    return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items())


def render_auto_conf(existing: str, settings: dict[str, str]) -> str:
    """postgresql.auto.conf with `settings` set (other lines kept), the way ALTER SYSTEM writes it."""
    keep = []
    for line in existing.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in settings:
            continue
        keep.append(line)
    if not keep or not keep[0].startswith("#"):
        keep.insert(0, "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.")
    keep += [f"{k} = {_q(v)}" for k, v in settings.items()]
    return "\n".join(keep) + "\n"


def relocate_conf(text: str, old_dir: str, new_dir: str) -> str:
    """dvpn.conf of a restored copy: its hba and ident files are the copy's own."""
    out = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in ("hba_file", "ident_file"):
            line = line.replace("'" + old_dir.rstrip("/") + "/", "'" + new_dir.rstrip("/") + "/")
        out.append(line)
    return "\n".join(out) + "\n"
