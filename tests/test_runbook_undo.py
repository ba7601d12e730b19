"""A runbook that fails leaves disk and daemon as they were: the daemon goes back to its previous
configuration when the new one cannot be applied, and dvpnctl puts peers.d back when the daemon
refuses or does not answer."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from dvpnd.cli import peers as cli
from dvpnd.config.load import load_config
from dvpnd.daemon.core import Daemon
from dvpnd.errors import DvpnError

from .test_config import HUB, K2, write


def test_a_reload_whose_reconcile_fails_leaves_the_daemon_on_the_old_config(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path, HUB)
    d = Daemon(f, load_config(f))
    applied: list[list[str]] = []

    async def reconcile(why: str, force_firewall: bool = False) -> bool:
        names = [p.name for p in d.config.peers]
        applied.append(names)
        ok = "spoke-b" not in names  # the new spoke cannot be applied
        d.reconcile_error = None if ok else "wireguard-go rejected the change for wg0: errno=22"
        return ok

    monkeypatch.setattr(d, "reconcile", reconcile)
    write(tmp_path, HUB + f"  - name: spoke-b\n    public_key: {K2}\n    address: 10.88.0.12\n")
    outcome = asyncio.run(d.reload())
    assert not outcome.ok and not outcome.bad_input
    assert outcome.problems == ("wireguard-go rejected the change for wg0: errno=22; "
                                "the previous configuration stays in force",)
    assert [p.name for p in d.config.peers] == ["spoke-a"] == [p.name for p in d.reconciler.config.peers]
    assert applied == [["spoke-a", "spoke-b"], ["spoke-a"]]  # tried, then the old one again


@pytest.mark.parametrize("daemon", ["refuses", "unreachable"])
def test_spoke_add_leaves_no_file_when_the_daemon_refuses_or_is_not_there(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          daemon: str) -> None:
    f = write(tmp_path, HUB + "peers_dir: peers.d\n")
    (tmp_path / "peers.d").mkdir()

    def request(args: argparse.Namespace, cmd: str) -> dict[str, Any]:
        if daemon == "unreachable":
            raise DvpnError("/run/dvpn/control.sock: no control socket; is dvpnd running?")
        return {"ok": False, "problems": ["reconcile failed"]}

    monkeypatch.setattr(cli, "request", request)
    args = argparse.Namespace(config=f, name="spoke-b", pubkey=K2, address=None)
    with pytest.raises(DvpnError, match="undone"):
        cli.cmd_spoke_add(args)
    assert list((tmp_path / "peers.d").iterdir()) == []
