"""The root-only control socket that `dvpnctl` talks to.

One JSON request per connection, one JSON reply: {"cmd": "status" | "reload" | "down" |
"firewall"} -> {"ok": bool, ...}. The socket is created 0600 in a 0700 directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvpnd.daemon.status import render_detail
from dvpnd.errors import DvpnError

if TYPE_CHECKING:
    from dvpnd.daemon.core import Daemon

log = logging.getLogger("dvpnd.control")
MAX_REQUEST = 4096


class ControlServer:
    def __init__(self, server: asyncio.AbstractServer | None, path: Path):
        self.server = server
        self.path = path

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


async def handle(daemon: Daemon, request: dict[str, Any]) -> dict[str, Any]:
    cmd = request.get("cmd")
    if cmd == "status":
        snap = replace(daemon.snapshot, extra=daemon.counters())
        if daemon.db is not None:  # cheap and always current, like the counters
            snap = replace(snap, postgres=daemon.db.view,
                           backup=daemon.db.status if daemon.config.backup.enabled else None)
        return {"ok": True, "status": render_detail(snap, time.time(), daemon.config.stale_after)}
    if cmd == "reload":
        ok, problems = await daemon.reload()
        return {"ok": ok, "problems": problems, "bad_input": daemon.last_reload_bad_input}
    if cmd == "firewall":
        from dvpnd.firewall.nft import list_table_text

        text = await asyncio.to_thread(list_table_text)
        return {"ok": text is not None, "table": text}
    if cmd == "rekey":
        ok, problems = await daemon.rekey()
        return {"ok": ok, "problems": problems}
    if cmd == "firewall-apply":
        ok = await daemon.reconcile("firewall apply requested", force_firewall=True)
        fw = daemon.reconciler.firewall_state
        return {"ok": ok and fw.error is None, "problems": [e for e in (fw.error, daemon.reconcile_error) if e]}
    if cmd == "backup-now":
        from dvpnd.postgres.backup import entry_json

        if daemon.db is None or not daemon.config.backup.enabled:
            return {"ok": False, "problems": [f"{daemon.config_path}: backups are not enabled (backup section)"],
                    "bad_input": True}
        try:
            entry = await daemon.db.backup_now()
        except DvpnError as e:
            return {"ok": False, "problems": [str(e)]}
        return {"ok": True, "backup": entry_json(entry)}
    if cmd == "down":
        try:
            await daemon.down()
        except DvpnError as e:
            return {"ok": False, "problems": [str(e)]}
        return {"ok": True}
    return {"ok": False, "problems": [f"unknown command {cmd!r}"]}


async def start(daemon: Daemon) -> ControlServer:
    path = daemon.config.control_socket
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        # Another live dvpnd would answer; a stale socket from a killed one does not.
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(str(path))
            raise DvpnError(f"{path}: another dvpnd is already running here")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            if len(line) > MAX_REQUEST:
                reply: dict[str, Any] = {"ok": False, "problems": ["request too large"]}
            else:
                try:
                    req = json.loads(line or b"{}")
                    reply = await handle(daemon, req if isinstance(req, dict) else {})
                except json.JSONDecodeError:
                    reply = {"ok": False, "problems": ["request is not JSON"]}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    old = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(on_client, path=str(path), limit=MAX_REQUEST * 2)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return ControlServer(server, path)


def request(path: Path, cmd: str, timeout: float = 60.0) -> dict[str, Any]:
    """Client side, used by dvpnctl. Raises DvpnError if the daemon cannot be reached."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise DvpnError(f"{path}: no control socket; is dvpnd running?") from None
    except PermissionError:
        raise DvpnError(f"{path}: permission denied (dvpnctl needs root)") from None
    except OSError as e:
        raise DvpnError(f"{path}: cannot talk to dvpnd: {e.strerror or e}") from None
    try:
        reply: dict[str, Any] = json.loads(data)
    except json.JSONDecodeError:
        raise DvpnError(f"{path}: dvpnd sent an unreadable reply") from None
    return reply
