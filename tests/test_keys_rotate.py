"""The node's key on disk: made without touching a shared directory, refused when another user
owns it, and a rotation that is undone whole when dvpnd refuses the new key or does not answer,
never leaving the node without a key (or silently with a new identity)."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from dvpnd.cli import peers as cli
from dvpnd.errors import DvpnError
from dvpnd.wireguard.keys import KeyFileError, encode_key, generate_private_key, load_or_create_private_key

from .test_config import SPOKE, write


def test_a_new_key_leaves_an_existing_shared_directory_as_it_was(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    _, created = load_or_create_private_key(shared / "private.key")
    assert created and stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "private.key").stat().st_mode) == 0o600
    _, created = load_or_create_private_key(tmp_path / "new" / "dir" / "private.key")
    assert created and stat.S_IMODE((tmp_path / "new" / "dir").stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_a_key_another_user_owns_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "private.key"
    load_or_create_private_key(f)
    os.chown(f, 65534, 65534)
    with pytest.raises(KeyFileError, match=r"owned by uid 65534, not 0: .* run 'chown 0: "):
        load_or_create_private_key(f)


@pytest.mark.parametrize("left", ["private.key.next", "private.key.old"])
def test_an_interrupted_rotation_is_no_reason_for_a_new_identity(tmp_path: Path, left: str) -> None:
    (tmp_path / left).write_text(encode_key(generate_private_key()) + "\n")
    with pytest.raises(KeyFileError, match=rf"missing, but {left} exist.* To finish it: mv .*\.next .*; to go back: mv .*\.old "):
        load_or_create_private_key(tmp_path / "private.key")
    assert not (tmp_path / "private.key").exists()


def _setup(tmp_path: Path) -> tuple[argparse.Namespace, Path, bytes, bytes]:
    state = tmp_path / "state"
    cfg = write(tmp_path, SPOKE + f"state_dir: {state}\n")
    key = state / "private.key"
    load_or_create_private_key(key)
    args = argparse.Namespace(config=cfg, commit=False)
    assert cli.cmd_rotate_key(args) == 0
    args.commit = True
    return args, key, key.read_bytes(), (state / "private.key.next").read_bytes()


def _files(key: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(key.parent.iterdir())}


@pytest.mark.parametrize("daemon", ["refuses", "unreachable"])
def test_a_failed_commit_leaves_disk_and_daemon_as_they_were(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              daemon: str) -> None:
    args, key, old, new = _setup(tmp_path)
    asked: list[str] = []

    def request(a: argparse.Namespace, cmd: str) -> dict[str, Any]:
        asked.append(key.read_bytes().decode().strip())
        if daemon == "unreachable":
            raise DvpnError("/run/dvpn/control.sock: no control socket; is dvpnd running?")
        return {"ok": len(asked) > 1, "problems": ["wireguard-go rejected the change"]}

    monkeypatch.setattr(cli, "request", request)
    with pytest.raises(DvpnError, match="the old key is back in"):
        cli.cmd_rotate_key(args)
    assert _files(key) == {"private.key": old, "private.key.next": new}
    # the daemon was asked to re-read the key twice: on the new one, then on the old one again
    assert asked == [new.decode().strip(), old.decode().strip()]


def test_a_commit_switches_the_key_and_deletes_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args, key, old, new = _setup(tmp_path)
    monkeypatch.setattr(cli, "request", lambda a, cmd: {"ok": True})
    assert cli.cmd_rotate_key(args) == 0
    assert _files(key) == {"private.key": new}
