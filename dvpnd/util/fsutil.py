"""Durable file writes (temp file, fsync, rename, fsync of the directory) and careful reads."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dvpnd.errors import DvpnError


class UnsafeFile(DvpnError):
    """A path is not the plain file it should be (a link, a FIFO, a device, too large)."""


def read_regular(path: Path, limit: int = 1 << 20, follow_links: bool = False,
                 check: Callable[[os.stat_result], None] | None = None) -> str | None:
    """The text of `path` if it is a regular file of at most `limit` bytes, None if it does not
    exist; UnsafeFile otherwise. A FIFO is opened without waiting for a writer and refused, as are
    devices and directories; a symbolic link too unless `follow_links`. `check` sees the open
    file's stat (mode, owner) and may raise before anything is read."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_links:
            raise UnsafeFile(f"{path}: a symbolic link; refusing to follow it") from None
        raise UnsafeFile(f"{path}: cannot read: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)  # before fdopen, which refuses a directory with an exception of its own
        raise UnsafeFile(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        if check is not None:
            check(st)
        data = f.read(limit + 1)
    if len(data) > limit:
        size = f"{limit // 1024} KiB" if limit >= 1024 else f"{limit} bytes"
        raise UnsafeFile(f"{path}: larger than {size}")
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise UnsafeFile(f"{path}: not UTF-8 text (byte {e.start})") from None


def write_atomic(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file (with
    `mode`, and `owner` (uid, gid) if given, from the start)."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_yaml(path: Path, doc: dict[str, Any], mode: int = 0o644) -> None:
    """A YAML file written durably (the runbooks' peers.d files, the lab's configs)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode(), mode=mode)
