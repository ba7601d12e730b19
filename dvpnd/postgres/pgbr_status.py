"""What pgBackRest's state means for status and the schedule (pure; issue 19).

`read_info` turns `pgbackrest info --output=json` (the runner's result, written by the postgres
user: every field checked) into one `RepoView` per repository: its newest full and differential
backups and the newest WAL segment archived there. The offsite repository is "behind by N
segments" when its newest segment is N before the local one's (both archived by the same
archive-push, so N stays 0 while the store answers). `next_op` is the schedule: which runner
operation is due now, if any.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dvpnd.config.model import PgBackRestConfig

WAL_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\Z")
SEGMENTS_PER_LOG = 256  # 16 MiB segments (PostgreSQL's default, and initdb's)
RETRY = 600.0  # seconds before a failed operation is tried again


@dataclass(frozen=True)
class RepoView:
    key: int
    status: str  # pgBackRest's message for the repository ("ok", "missing stanza path", ...)
    ok: bool
    last_full: float | None = None  # the newest full backup's stop time
    last_diff: float | None = None  # the newest differential's (or full's, if newer)
    backups: int = 0
    last_size: int | None = None  # the newest backup's size in the repository (bytes)
    wal_max: str | None = None  # the newest archived WAL segment


def segment_number(wal: str) -> tuple[int, int] | None:
    """(timeline, segment number) of a WAL file name, None if it is not one."""
    m = WAL_RE.match(wal)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16) * SEGMENTS_PER_LOG + int(m.group(3), 16)


def behind(local: str | None, offsite: str | None) -> int | None:
    """How many segments the offsite archive is behind the local one (None: cannot tell)."""
    a = segment_number(local) if local else None
    if a is None:
        return None
    b = segment_number(offsite) if offsite else None
    if b is None:
        return a[1] + 1  # nothing there yet: everything since the first segment
    if b[0] > a[0] or (b[0] == a[0] and b[1] >= a[1]):
        return 0
    return a[1] - b[1] if b[0] == a[0] else None


def printable(text: str) -> str:
    """`text` with anything but printable ASCII as '?' (what the postgres user's files and a
    wrong passphrase's junk may hold never reaches a log or the status as is)."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


ERROR_RE = re.compile(r"^(?:P\d+ +)?ERROR: \[\d+\]: ")
S3_CODE_RE = re.compile(r"<Code>([A-Za-z]{1,64})</Code>")


def error_line(stderr: str) -> str:
    """What went wrong, from pgBackRest's stderr: its first `ERROR: [NNN]: ...` line (an HTTP
    failure is followed by the request and response headers, whose last line says nothing),
    with the S3 error code of the answer if it has one; else the last line; at most 500
    characters."""
    lines = [x.strip() for x in stderr.splitlines() if x.strip()]
    first = next((x for x in lines if ERROR_RE.match(x)), None)
    code = S3_CODE_RE.search(stderr)  # (the store's own word for it: SignatureDoesNotMatch, NoSuchBucket)
    line = first or (lines[-1] if lines else "")
    if first and first.endswith(":"):  # (the cause is on the next line: "CryptoError: ...")
        after = lines[lines.index(first) + 1:][:1]
        if after and not after[0].startswith("***"):
            line = f"{first} {after[0]}"
    line = printable(line)  # (a wrong passphrase decrypts to junk)
    if "unable to load info file" in line and ("FormatError: " in line or "CryptoError: " in line):
        line = line.split(" at line ")[0] + " (what a wrong cipher passphrase reads)"
    if first and code:
        line = f"{line.rstrip(':')}: {code.group(1)}"
    elif first and " 403 " in first:  # (a HEAD's answer has no body to say why)
        line = f"{line.rstrip(':')}: the store refused the offsite key pair (credentials_file) or its rights"
    return line[:500]


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def read_info(info: Any, stanza: str, repos: tuple[int, ...]) -> dict[int, RepoView]:
    """One view per configured repository from `info --output=json` (anything malformed: not ok)."""
    doc = next((_dict(s) for s in info if _dict(s).get("name") == stanza), None) if isinstance(info, list) else None
    if doc is None:
        return {k: RepoView(k, "no such stanza in pgBackRest's info", False) for k in repos}
    repo_status: dict[int, str] = {}
    for r in doc.get("repo") or []:
        key, st = _dict(r).get("key"), _dict(_dict(r).get("status"))
        if isinstance(key, int):
            repo_status[key] = "ok" if st.get("code") == 0 else printable(" ".join(
                str(st.get("message", "unknown")).split()))[:200]  # (one line; a wrong passphrase's junk as '?')
    views: dict[int, dict[str, Any]] = {k: {"backups": 0} for k in repos}
    for raw in doc.get("backup") or []:
        b = _dict(raw)
        key = _dict(b.get("database")).get("repo-key")
        stop = _num(_dict(b.get("timestamp")).get("stop"))
        if key not in views or stop is None or b.get("error") is True:
            continue  # (a backup pgBackRest marks in error is never counted)
        v = views[key]
        v["backups"] += 1
        kind = b.get("type")
        if kind == "full" and stop > (v.get("last_full") or 0):
            v["last_full"] = stop
        if kind in ("full", "diff") and stop > (v.get("last_diff") or 0):
            v["last_diff"] = stop
        if stop >= (v.get("newest") or 0):
            size = _num(_dict(_dict(b.get("info")).get("repository")).get("delta"))
            v["newest"], v["last_size"] = stop, None if size is None else int(size)
    for raw in doc.get("archive") or []:
        a = _dict(raw)
        key, top = _dict(a.get("database")).get("repo-key"), a.get("max")
        if key in views and isinstance(top, str) and segment_number(top) is not None:
            if views[key].get("wal_max") is None or top > views[key]["wal_max"]:
                views[key]["wal_max"] = top
    out = {}
    for k, v in views.items():
        status = repo_status.get(k, "not in pgBackRest's info")
        out[k] = RepoView(k, status, status == "ok", v.get("last_full"), v.get("last_diff"), v["backups"],
                          v.get("last_size"), v.get("wal_max"))
    return out


def next_op(cfg: PgBackRestConfig, now: float, primary: bool, last_ok: Mapping[str, float],
            last_fail: Mapping[str, float]) -> str | None:
    """The runner operation due now, or None. Only the primary archives and backs up (one
    writer per stanza); `last_ok`/`last_fail`: when each operation last succeeded or failed.
    The stanza is created first; a failed operation waits RETRY before it is tried again (the
    others go on meanwhile: a check says more about a failing backup)."""
    if not primary:
        return None

    def waiting(op: str) -> bool:
        failed = last_fail.get(op)
        return failed is not None and failed > last_ok.get(op, 0) and now - failed < RETRY

    if "stanza-create" not in last_ok:
        return None if waiting("stanza-create") else "stanza-create"
    full = last_ok.get("backup-full")
    if full is None or now - full >= cfg.full_every:
        if not waiting("backup-full"):
            return "backup-full"
    elif now - max(full, last_ok.get("backup-diff", 0)) >= cfg.diff_every and not waiting("backup-diff"):
        return "backup-diff"
    for op, every in (("check", cfg.check_every), ("verify", cfg.verify_every), ("drill", cfg.drill_every)):
        if op == "drill" and full is None:
            continue  # (nothing to restore yet)
        if now - last_ok.get(op, 0) >= every and not waiting(op):
            return op
    return None
