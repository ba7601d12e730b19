"""Reading the local PostgreSQL server (libpq through psycopg): is it up, primary or replica, its
replicas, slots and lag, the size of its databases. Only reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dvpnd.config.model import PostgresConfig
from dvpnd.errors import PgError

# --- reading -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplicaView:
    name: str
    client_addr: str | None
    state: str
    lag_bytes: int | None
    replay_lag_sec: float | None


@dataclass(frozen=True)
class SlotView:
    name: str
    active: bool
    retained_bytes: int | None


@dataclass(frozen=True)
class PgView:
    """The server as one poll saw it."""

    up: bool
    role: str  # primary | replica | down
    error: str | None = None
    version: str | None = None
    replicas: tuple[ReplicaView, ...] = ()
    slots: tuple[SlotView, ...] = ()
    upstream: str | None = None  # replica: the primary it streams from
    receiver_status: str | None = None  # replica: streaming, ...
    lag_bytes: int | None = None  # replica: received but not replayed
    lag_sec: float | None = None  # replica: age of the last replayed transaction when behind, else 0
    extra: dict[str, Any] = field(default_factory=dict)


def conninfo(pg: PostgresConfig, dbname: str = "postgres") -> str:
    return (f"host={pg.socket_dir} port={pg.port} user=postgres dbname={dbname} "
            "connect_timeout=3 application_name=dvpnd")


def connect(pg: PostgresConfig, autocommit: bool = True) -> Any:
    import psycopg

    try:
        return psycopg.connect(conninfo(pg), autocommit=autocommit)
    except psycopg.Error as e:
        raise PgError(f"cannot connect to PostgreSQL on {pg.socket_dir} port {pg.port}: "
                      f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}") from None


def read_status(pg: PostgresConfig) -> PgView:
    """One poll of the local server; a server that cannot be reached is `down`, not an error."""
    import psycopg

    try:
        conn = connect(pg)
    except PgError as e:
        return PgView(up=False, role="down", error=str(e))
    try:
        with conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            if not in_recovery:
                reps = tuple(
                    ReplicaView(name=r[0] or "", client_addr=str(r[1]) if r[1] else None, state=r[2],
                                lag_bytes=int(r[3]) if r[3] is not None else None,
                                replay_lag_sec=float(r[4]) if r[4] is not None else None)
                    for r in conn.execute(
                        "SELECT application_name, client_addr, state,"
                        " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn),"
                        " EXTRACT(EPOCH FROM replay_lag) FROM pg_stat_replication ORDER BY application_name"))
                slots = tuple(
                    SlotView(name=r[0], active=bool(r[1]), retained_bytes=int(r[2]) if r[2] is not None else None)
                    for r in conn.execute(
                        "SELECT slot_name, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)"
                        " FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name"))
                return PgView(up=True, role="primary", version=version, replicas=reps, slots=slots)
            row = conn.execute(
                "SELECT (SELECT status FROM pg_stat_wal_receiver),"
                " (SELECT sender_host FROM pg_stat_wal_receiver),"
                " pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()),"
                " CASE WHEN pg_last_wal_receive_lsn() IS NULL"
                "       OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
                "      ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END").fetchone()
            return PgView(up=True, role="replica", version=version, receiver_status=row[0], upstream=row[1],
                          lag_bytes=int(row[2]) if row[2] is not None else None,
                          lag_sec=round(float(row[3]), 3) if row[3] is not None else None)
    except psycopg.Error as e:
        return PgView(up=False, role="down", error=f"PostgreSQL query failed: {str(e).strip()}")


def database_size(pg: PostgresConfig) -> int | None:
    """Bytes in all databases (the first backup's space estimate), or None if unreachable."""
    try:
        with connect(pg) as conn:
            return int(conn.execute("SELECT sum(pg_database_size(datname)) FROM pg_database").fetchone()[0])
    except Exception:  # noqa: BLE001 - an estimate only
        return None
