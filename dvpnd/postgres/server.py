"""The local PostgreSQL server: reading its state, and the runbook steps that change it.

dvpn does not run the server (Debian's postgresql@15-main unit, or the lab, does); it
writes the server's overlay-facing configuration, bootstraps replicas over the overlay,
promotes and re-points them, and reports what it sees. Everything that touches the server
or its files is here; what the files say comes from pgconf."""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

from dvpnd.config.model import Config, PostgresConfig
from dvpnd.errors import PgError
from dvpnd.postgres import conf as pgconf
from dvpnd.postgres.state import connect, read_status
from dvpnd.util.fsutil import UnsafeFile, read_regular, write_atomic
from dvpnd.util.procutil import ChildError, call_as, child_env

T = TypeVar("T")

log = logging.getLogger("dvpnd.pg")


# --- running things as the server's user -------------------------------------------------

def server_user(pg: PostgresConfig) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(pg.os_user)
    except KeyError:
        raise PgError(f"postgres.os_user: no such user {pg.os_user!r} (is postgresql-15 installed?)") from None


def as_user(pg: PostgresConfig, argv: list[str]) -> list[str]:
    """argv run as the server's OS user (dvpnctl runs as root)."""
    if os.geteuid() != 0:
        return argv
    u = server_user(pg)
    return ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--init-groups", "--", *argv]


def run(pg: PostgresConfig, argv: list[str], what: str, env: dict[str, str] | None = None,
        timeout: float = 3600) -> str:
    full = as_user(pg, argv)
    try:
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                           env=child_env(**(env or {})), cwd="/")
    except FileNotFoundError:
        raise PgError(f"{what}: {argv[0]} not found (postgres.bin_dir is {pg.bin_dir})") from None
    except subprocess.TimeoutExpired:
        raise PgError(f"{what}: no answer after {timeout:.0f}s") from None
    if r.returncode != 0:
        detail = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise PgError(f"{what} failed: {detail[-1] if detail else f'exit {r.returncode}'}")
    return r.stdout


def as_server_user(pg: PostgresConfig, fn: Callable[[], T], what: str) -> T:
    """`fn()` as the server's OS user when dvpnctl runs as root.

    Everything dvpn writes under the server's directories is written this way, never by root:
    those directories belong to the server's user, who could otherwise plant a symbolic link
    that makes root overwrite, disclose or chown a file of its choosing."""
    if os.geteuid() != 0:
        return fn()
    u = server_user(pg)
    try:
        return call_as(u.pw_uid, u.pw_gid, fn, what)
    except ChildError as e:
        raise PgError(str(e)) from None


def _sync_file(path: Path, render: Callable[[str | None], str], mode: int) -> bool:
    """Make `path` say render(what it says now) unless it already does; True if written.
    Refuses a path that is not a regular file. Runs as the server's user."""
    current = read_regular(path)
    text = render(current)
    if current == text:
        return False
    write_atomic(path, text.encode(), mode=mode)
    return True


def _text(text: str) -> Callable[[str | None], str]:
    return lambda _current: text


# --- the replication password ------------------------------------------------------------

def read_password(pg: PostgresConfig) -> str:
    """The replication password: a regular file (links followed) that only root reads."""
    path = pg.password_file

    def private(st: os.stat_result) -> None:
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PgError(f"{path}: the replication password is accessible by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}'")
        if os.geteuid() == 0 and st.st_uid != 0:
            raise PgError(f"{path}: owned by uid {st.st_uid}, not root: whoever owns it can change the "
                          f"replication password; run 'chown root: {path}'")

    try:
        text = read_regular(path, 4096, follow_links=True, check=private)
    except UnsafeFile as e:
        raise PgError(str(e)) from None
    if text is None:
        raise PgError(f"{path}: missing (postgres.password_file: the replication password, "
                      "the same on every spoke; 'dvpnctl pg password' makes one)")
    text = text.strip()
    if len(text) < 16 or "\n" in text:
        raise PgError(f"{path}: must hold one line of 16 to 4096 characters")
    return text


def scram_verifier(conn: Any, user: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of `password`, made by libpq (SASLprep included, so any
    password matches what libpq's clients send); the password itself never reaches the server."""
    raw: bytes = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256")
    return raw.decode()


def make_password(pg: PostgresConfig) -> bool:
    """Create the replication password file if it does not exist; True if created."""
    if pg.password_file.exists():
        return False
    pg.password_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(pg.password_file, (secrets.token_urlsafe(32) + "\n").encode(), mode=0o600)
    return True


# --- setup -------------------------------------------------------------------------------

def _empty_dir(d: Path) -> None:
    """Remove what `d` holds (a failed copy), links not followed. Runs as the server's user."""
    for child in d.iterdir() if d.is_dir() and not d.is_symlink() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _is_empty(d: Path) -> bool:
    return not d.exists() or not any(d.iterdir())


def is_primary_node(config: Config) -> bool:
    return config.postgres.primary == config.address


def write_pgpass(config: Config) -> bool:
    pg = config.postgres
    text = pgconf.render_pgpass(pg, read_password(pg))
    return as_server_user(pg, lambda: _sync_file(pg.passfile, _text(text), 0o600), f"writing {pg.passfile}")


def write_files(config: Config) -> list[str]:
    """dvpn.conf, dvpn_hba.conf, dvpn_ident.conf, the include line and the pgpass; what changed."""
    pg = config.postgres
    main = pg.config_dir / "postgresql.conf"

    def with_include(current: str | None) -> str:
        if current is None:
            raise PgError(f"{main}: missing (postgres.config_dir: where the cluster's postgresql.conf is)")
        return pgconf.with_include(current)

    wanted = [
        (main, with_include, 0o644),  # first: nothing is written if it is missing
        (pg.config_dir / pgconf.CONF_NAME, _text(pgconf.render_server_conf(config)), 0o640),
        (pg.config_dir / pgconf.HBA_NAME, _text(pgconf.render_hba(config)), 0o640),
        (pg.config_dir / pgconf.IDENT_NAME, _text(pgconf.render_ident(config)), 0o640),
        (pg.passfile, _text(pgconf.render_pgpass(pg, read_password(pg))), 0o600),
    ]

    def work() -> list[str]:
        return [str(path) for path, render, mode in wanted if _sync_file(path, render, mode)]

    return as_server_user(pg, work, f"writing dvpn's files in {pg.config_dir}")


def ensure_data_dir(pg: PostgresConfig) -> None:
    """The data directory exists, is a real directory of the server's user, mode 0700. Made by
    that user: root never creates or chowns anything in the server's tree."""
    d = pg.data_dir

    def work() -> None:
        make_it = f"create it as root: install -d -o {pg.os_user} -g {pg.os_user} -m 0700 {d}"
        try:
            if not os.path.lexists(d):
                os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            raise PgError(f"{d.parent}: missing; {make_it}") from None
        except PermissionError:
            raise PgError(f"{d.parent}: {pg.os_user} may not create {d.name} there; {make_it}") from None
        st = os.lstat(d)
        if stat.S_ISLNK(st.st_mode):
            raise PgError(f"{d}: a symbolic link; postgres.data_dir must name the directory itself")
        if not stat.S_ISDIR(st.st_mode):
            raise PgError(f"{d}: not a directory")
        if st.st_uid != os.geteuid():
            raise PgError(f"{d}: owned by uid {st.st_uid}, not {pg.os_user}; if it is meant to be the "
                          f"data directory: chown {pg.os_user}: {d}")
        os.chmod(d, 0o700)

    as_server_user(pg, work, f"preparing {d}")


def initdb(pg: PostgresConfig) -> None:
    ensure_data_dir(pg)
    run(pg, [str(pg.bin_dir / "initdb"), "-D", str(pg.data_dir), "-U", "postgres", "--auth-local=peer",
             "--auth-host=scram-sha-256", "--data-checksums", "-E", "UTF8", "--locale=C.UTF-8"], "initdb")


def ensure_replication_role(pg: PostgresConfig) -> str:
    """On a running primary: the replication role exists with the password file's password."""
    from psycopg import sql

    password = read_password(pg)
    with connect(pg) as conn:
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            return "a replica: the role comes from the primary"
        row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (pg.replication_user,)).fetchone()
        # A verifier has a fresh salt each time, so there is nothing cheap to compare: set it
        # (connected replicas keep streaming; the password is checked only when one connects).
        verifier = scram_verifier(conn, pg.replication_user, password)
        verb = "ALTER" if row is not None else "CREATE"
        conn.execute(sql.SQL("{} ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(pg.replication_user), sql.Literal(verifier)))
        return f"role {pg.replication_user} {'password set' if row is not None else 'created'} (SCRAM-SHA-256)"


def setup(config: Config) -> list[str]:
    """Idempotent: initdb on the primary's node if its data directory is empty, write dvpn's
    files, and (on a running primary) make the replication role. Returns what it did."""
    pg = config.postgres
    done = []
    if make_password(pg):
        done.append(f"made the replication password in {pg.password_file} (copy it to every spoke)")
    if _is_empty(pg.data_dir):
        if not is_primary_node(config):
            raise PgError(f"{pg.data_dir} is empty and this node is not the primary "
                          f"({pg.primary}): run 'dvpnctl pg init-replica' to copy the primary")
        initdb(pg)
        done.append(f"initdb {pg.data_dir}")
    done += [f"wrote {p}" for p in write_files(config)]
    try:
        done.append(ensure_replication_role(pg))
    except PgError:
        done.append("server not running: start it, then run 'dvpnctl pg setup' again to make the replication role")
    return done


# --- replicas ----------------------------------------------------------------------------

def create_slot(config: Config, primary: IPv4Address) -> None:
    """This node's physical slot on `primary`, made over the replication protocol."""
    pg = config.postgres
    run(pg, [str(pg.bin_dir / "pg_receivewal"), "--create-slot", "--if-not-exists", "-S", pg.slot,
             "-h", str(primary), "-p", str(pg.port), "-U", pg.replication_user, "--no-password"],
        f"creating replication slot {pg.slot} on {primary}", env={"PGPASSFILE": str(pg.passfile)}, timeout=60)


def _point_at(config: Config, primary: IPv4Address) -> dict[str, str]:
    return {"primary_conninfo": pgconf.render_primary_conninfo(config, primary),
            "primary_slot_name": config.postgres.slot}


def init_replica(config: Config, primary: IPv4Address | None = None) -> list[str]:
    """Copy the primary into this node's empty data directory and make it a streaming replica."""
    pg = config.postgres
    primary = primary or pg.primary
    if primary is None or primary == config.address:
        raise PgError(f"{config.path}: postgres.primary is this node; init-replica copies another spoke")
    if not _is_empty(pg.data_dir):
        raise PgError(f"{pg.data_dir} is not empty: a replica starts from an empty data directory "
                      "(stop the server and move the old one aside first)")
    ensure_data_dir(pg)
    write_pgpass(config)
    done = []
    create_slot(config, primary)
    done.append(f"slot {pg.slot} on {primary}")
    t0 = time.monotonic()
    try:
        run(pg, [str(pg.bin_dir / "pg_basebackup"), "-D", str(pg.data_dir), "-h", str(primary),
                 "-p", str(pg.port), "-U", pg.replication_user, "--no-password", "-X", "stream",
                 "-S", pg.slot, "-c", "fast", "-l", f"dvpn replica {config.name}"],
            f"pg_basebackup from {primary}", env={"PGPASSFILE": str(pg.passfile)})
    except PgError:
        as_server_user(pg, lambda: _empty_dir(pg.data_dir), f"emptying {pg.data_dir}")
        raise
    done.append(f"copied {primary} into {pg.data_dir} in {time.monotonic() - t0:.1f}s")
    settings = _point_at(config, primary)

    def standby() -> None:
        _sync_file(pg.data_dir / "postgresql.auto.conf",
                   lambda current: pgconf.render_auto_conf(current or "", settings), 0o600)
        _sync_file(pg.data_dir / "standby.signal", _text(""), 0o600)

    as_server_user(pg, standby, f"making {pg.data_dir} a standby")
    done += [f"wrote {p}" for p in write_files(config)]
    done.append("standby.signal written: start the server and it streams from the primary")
    return done


def promote(config: Config, timeout: int = 60) -> str:
    with connect(config.postgres) as conn:
        if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            raise PgError("this server is already a primary")
        ok = conn.execute("SELECT pg_promote(true, %s::int)", (timeout,)).fetchone()[0]
    if not ok:
        raise PgError(f"the server did not finish promotion within {timeout}s")
    return f"{config.name} ({config.address}) is now the primary"


def follow(config: Config, primary: IPv4Address, timeout: float = 60) -> list[str]:
    """Re-point this replica at a new primary (after `pg promote` there) without a restart."""
    from psycopg import sql

    pg = config.postgres
    if primary == config.address:
        raise PgError("a server cannot follow itself; use 'dvpnctl pg promote' on this node instead")
    write_pgpass(config)
    with connect(pg) as conn:
        if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            raise PgError("this server is a primary; only a replica follows another server")
    create_slot(config, primary)
    with connect(pg) as conn:
        for key, value in _point_at(config, primary).items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(key), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        view = read_status(pg)
        last = view
        if view.upstream == str(primary) and view.receiver_status == "streaming":
            return [f"slot {pg.slot} on {primary}", f"streaming from {primary}"]
        time.sleep(0.5)
    raise PgError(f"not streaming from {primary} after {timeout:.0f}s "
                  f"(receiver: {last.receiver_status if last else '?'} from {last.upstream if last else '?'})")
