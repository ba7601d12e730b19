"""pgBackRest for a spoke's PostgreSQL server (pure): its configuration, the server's archive
settings, and the command lines dvpnd's runner (pgbr_run.py) runs as the server's user.

One stanza per cluster (the primary and its replicas share it: whichever is primary archives
and backs up). Repositories: 1 is local (posix, on the spoke's volume), 2 is offsite
(S3-compatible) and encrypted on the spoke (aes-256-cbc, pgBackRest's repository cipher).

Everything pgBackRest writes lives under one home directory on the volume: spool (asynchronous
archive-push), lock (its default, /tmp/pgbackrest, is split by the unit's PrivateTmp) and log;
Dstack's root filesystem is read-only. Secrets (the S3 key pair, the cipher passphrase) are not
in the main file: they go in a file of their own in the include directory (`conf.d`, mode
0600, the postgres user's), so the main file can be shown and logged.

pgBackRest's config format is INI: one `key=value` per line, no quoting, so no value may hold
a newline (render refuses one).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from dvpnd.config.model import Config
from dvpnd.errors import DvpnError

CIPHER = "aes-256-cbc"
STANZA_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class PgBackRestConfError(DvpnError):
    pass


@dataclass(frozen=True)
class S3:
    endpoint: str  # a host name, no scheme or port: pgBackRest speaks HTTPS
    bucket: str
    region: str
    uri_style: str = "host"  # "path" for MinIO-style servers
    ca_file: Path | None = None  # pin a private CA (verification stays on)
    host: str | None = None  # connect here rather than to the endpoint's address (TLS still checks the endpoint)
    port: int | None = None


@dataclass(frozen=True)
class Repo:
    index: int  # 1: local, 2: offsite
    path: str  # a directory (posix) or a prefix in the bucket (s3)
    retention_full: int
    s3: S3 | None = None
    encrypted: bool = False


@dataclass(frozen=True)
class Plan:
    stanza: str
    pg_path: Path  # the data directory
    pg_port: int
    pg_socket: Path
    home: Path  # spool/, lock/, log/, conf.d/ and pgbackrest.conf
    repos: tuple[Repo, ...]
    process_max: int = 2
    archive_timeout: int = 60  # seconds; the most WAL a lost spoke can take with it
    io_timeout: int = 60  # seconds without an answer from the store before pgBackRest gives up
    compress_type: str = "lz4"

    @property
    def conf(self) -> Path:
        return self.home / "pgbackrest.conf"

    @property
    def include_dir(self) -> Path:
        return self.home / "conf.d"

    @property
    def secrets(self) -> Path:
        return self.include_dir / "secrets.conf"


def _line(key: str, value: object) -> str:
    text = str(value)
    if "\n" in text or "\r" in text:
        raise PgBackRestConfError(f"pgBackRest setting {key}: a value may not hold a line break")
    return f"{key}={text}"


def render_conf(plan: Plan) -> str:
    """pgbackrest.conf: no secret in it."""
    if not STANZA_RE.fullmatch(plan.stanza):
        raise PgBackRestConfError(f"stanza {plan.stanza[:40]!r}: letters, digits, '.', '_' and '-' only "
                                  "(it names a section of the file and a directory of the repository)")
    g = [
        "# Written by dvpnd; secrets are in conf.d/secrets.conf (0600).",
        "[global]",
        _line("spool-path", plan.home / "spool"),
        _line("lock-path", plan.home / "lock"),
        _line("log-path", plan.home / "log"),
        "log-level-console=warn",
        "log-level-file=info",
        "log-level-stderr=error",
        _line("compress-type", plan.compress_type),
        _line("process-max", plan.process_max),
        "archive-async=y",
        # pgBackRest's archive-timeout is how long a segment may take to reach the repositories or
        # come back from them (archive-push, a backup's WAL check, a restore's archive-get): never
        # shorter than the store's io-timeout, whatever the server's archive_timeout (a drill
        # under load once waited 10 s for one segment and failed)
        _line("archive-timeout", max(plan.archive_timeout, plan.io_timeout)),
        _line("io-timeout", plan.io_timeout),
        "start-fast=y",
        # (no delta=y: it checksums every file of every backup, so a differential after small
        # changes reads the whole cluster; pgBackRest trusts size and time stamp, and turns delta
        # on by itself where those cannot be trusted, after a timeline switch for one)
    ]
    for r in plan.repos:
        k = f"repo{r.index}"
        g.append(_line(f"{k}-path", r.path))
        g.append(_line(f"{k}-retention-full", r.retention_full))
        if r.s3 is not None:
            g += [f"{k}-type=s3", _line(f"{k}-s3-endpoint", r.s3.endpoint), _line(f"{k}-s3-bucket", r.s3.bucket),
                  _line(f"{k}-s3-region", r.s3.region), _line(f"{k}-s3-uri-style", r.s3.uri_style)]
            if r.s3.ca_file is not None:
                g.append(_line(f"{k}-storage-ca-file", r.s3.ca_file))
            if r.s3.host is not None:
                g.append(_line(f"{k}-storage-host", r.s3.host))
            if r.s3.port is not None:
                g.append(_line(f"{k}-storage-port", r.s3.port))
        else:
            g.append(f"{k}-type=posix")
        if r.encrypted:
            g.append(f"{k}-cipher-type={CIPHER}")
    s = [
        "",
        f"[{plan.stanza}]",
        _line("pg1-path", plan.pg_path),
        _line("pg1-port", plan.pg_port),
        _line("pg1-socket-path", plan.pg_socket),
    ]
    return "\n".join(g + s) + "\n"


def render_secrets(plan: Plan, s3_key: str = "", s3_secret: str = "", passphrase: str = "") -> str:
    """conf.d/secrets.conf: the offsite repository's key pair and cipher passphrase."""
    lines = ["[global]"]
    for r in plan.repos:
        k = f"repo{r.index}"
        if r.s3 is not None:
            if not s3_key or not s3_secret:
                raise PgBackRestConfError(f"repository {r.index} (S3) needs a key and a secret")
            lines += [_line(f"{k}-s3-key", s3_key), _line(f"{k}-s3-key-secret", s3_secret)]
        if r.encrypted:
            if len(passphrase) < 20:
                raise PgBackRestConfError(f"repository {r.index}: the cipher passphrase is shorter than 20 characters")
            lines.append(_line(f"{k}-cipher-pass", passphrase))
    return "\n".join(lines) + "\n"


def base_argv(plan: Plan, binary: str = "pgbackrest") -> list[str]:
    return [binary, f"--config={plan.conf}", f"--config-include-path={plan.include_dir}", f"--stanza={plan.stanza}"]


def archive_settings(plan: Plan, binary: str = "pgbackrest") -> dict[str, str]:
    """The server's archive settings (postgresql.auto.conf on the primary)."""
    cmd = " ".join(base_argv(plan, binary)) + " archive-push %p"
    return {"archive_mode": "on", "archive_command": cmd, "archive_timeout": str(plan.archive_timeout)}


def backup_argv(plan: Plan, kind: str, repo: int) -> list[str]:
    if kind not in ("full", "diff", "incr"):
        raise PgBackRestConfError(f"backup type {kind!r}: full, diff or incr")
    return [*base_argv(plan), f"--repo={repo}", f"--type={kind}", "backup"]


def _as_copy(spool: Path) -> list[str]:
    """A restore into a copy (a drill's or an operator's): it never archives into the stanza it
    came from, and it has a spool of its own (`copy_spool` says why)."""
    return ["--archive-mode=off", f"--spool-path={spool}"]


def copy_spool(plan: Plan, target: Path) -> Path:
    """The spool of a copy restored into `target`, one per copy (named by its directory).

    pgBackRest's restore empties its spool's archive queues before anything else (so a new
    cluster cannot inherit acknowledgements). On the live spool that deletes the `.ok` a running
    primary's archive-push is waiting for: the push has already started its one asynchronous
    process, waits out archive-timeout, fails, and PostgreSQL's archiver stalls behind it (seen:
    61 s with no segment archived after a restore beside a running primary). A copy's own spool
    also keeps its archive-get queue (restore_command carries the option) apart from the
    primary's and from other copies'."""
    digest = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
    return plan.home / "spool" / f"copy-{digest}"


def restore_argv(plan: Plan, target: Path, to: str, repo: int, delta: bool = False) -> list[str]:
    """A restore into `target`, to `latest` or a time ('2026-11-26 13:05:00+00'); it starts in
    recovery, then promotes at the target. Into a copy (never the live data directory) with
    archiving off (a drill or a restore never pushes WAL into the stanza it came from) and a
    spool of its own (`copy_spool`); `delta`: over a directory that holds files (pgBackRest's
    delta restore; it refuses while a server's postmaster.pid is there). Over the live data
    directory (only with `delta`) archiving and the spool stay as configured: it becomes the
    cluster again, a new timeline in the same stanza."""
    live = target.resolve() == plan.pg_path.resolve()
    if live and not delta:
        raise PgBackRestConfError(f"{target} is the live data directory")
    argv = [*base_argv(plan), f"--repo={repo}", f"--pg1-path={target}"]
    argv += ["--delta"] if delta else []
    argv += [] if live else _as_copy(copy_spool(plan, target))
    if to != "latest":
        argv += ["--type=time", f"--target={to}", "--target-action=promote"]
    return [*argv, "restore"]


def plan_for(config: Config) -> Plan:
    """The plan a spoke's config describes."""
    b, pg = config.backup.pgbackrest, config.postgres
    if b is None:
        raise PgBackRestConfError("backups are off (backup.enabled: false)")
    repos = [Repo(1, str(b.repo), b.keep_full)]
    o = b.offsite
    if o is not None:
        repos.append(Repo(2, o.path, o.keep_full, S3(o.endpoint, o.bucket, o.region, o.uri_style, o.ca_file, o.host,
                                                      o.port), encrypted=True))
    return Plan(stanza=b.stanza, pg_path=pg.data_dir, pg_port=pg.port, pg_socket=pg.socket_dir, home=b.home,
                repos=tuple(repos), process_max=b.process_max, archive_timeout=b.archive_timeout,
                io_timeout=b.io_timeout)


# The runner's operations: a fixed set, each a list of pgBackRest runs (a backup and a verify
# go to one repository at a time; the others cover every repository in one run).
OPS = ("stanza-create", "check", "backup-full", "backup-diff", "expire", "verify", "info", "drill")
DRILL_PORT = 5499  # the drill's server: a Unix socket in HOME/drill only (this number names it)


def op_argvs(base: list[str], repos: tuple[int, ...], op: str) -> list[list[str]]:
    if op not in OPS:
        raise PgBackRestConfError(f"operation {op[:40]!r}: one of {', '.join(OPS)}")
    if op.startswith("backup-"):
        return [[*base, f"--repo={r}", f"--type={op.removeprefix('backup-')}", "backup"] for r in repos]
    if op == "verify":
        return [[*base, f"--repo={r}", "verify"] for r in repos]
    if op == "info":
        return [[*base, "--output=json", "info"]]
    if op == "drill":
        return []  # (the runner's own steps: drill_argv, then a server started on the copy)
    return [[*base, op]]


def drill_argv(base: list[str], data: Path, spool: Path) -> list[str]:
    """A restore drill's restore: the local repository's newest backup into scratch `data`, to
    the first consistent moment, promoted, as a copy with the spool `spool` (the drill's own)."""
    return [*base, "--repo=1", f"--pg1-path={data}", *_as_copy(spool), "--type=immediate",
            "--target-action=promote", "restore"]


def render_runner(plan: Plan, binary: str, bin_dir: Path = Path("/usr/lib/postgresql/15/bin")) -> str:
    """runner.json: what the runner needs besides the operation (no secret)."""
    local = next((r.path for r in plan.repos if r.s3 is None), None)
    return json.dumps({"argv": base_argv(plan, binary), "repos": [r.index for r in plan.repos], "repo_path": local,
                       "bin_dir": str(bin_dir), "pg_path": str(plan.pg_path)}, indent=1) + "\n"
