"""The root-only control socket that `dvpnctl` talks to.

One JSON request per connection, one JSON reply: {"cmd": "status" | "reload" | "down" |
"firewall"} -> {"ok": bool, ...}. The socket is created 0600 in a 0700 directory, and a peer
that is not root (SO_PEERCRED) is refused; every request, however malformed, gets a reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

from dvpnd.daemon.status import render_detail
from dvpnd.errors import DvpnError
from dvpnd.serve.api import Commands, Outcome, View
from dvpnd.util.unixsock import unix_request

log = logging.getLogger("dvpnd.control")
MAX_REQUEST = 4096
REQUEST_TIMEOUT = 10.0


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


async def handle(view: View, commands: Commands, request: dict[str, Any]) -> dict[str, Any]:
    cmd = request.get("cmd")
    if cmd == "status":
        await view.fresh()
        pub = view.published()
        return {"ok": True, "status": render_detail(pub.snapshot, pub.now, pub.stale_after)}
    actions = {"reload": commands.reload, "rekey": commands.rekey, "firewall": commands.firewall_table,
               "firewall-apply": commands.firewall_apply, "backup-now": commands.backup_now, "down": commands.down}
    if cmd in actions:
        return (await actions[cmd]()).reply()
    if cmd == "roster-publish":
        path = request.get("file")
        if not isinstance(path, str) or not path.startswith("/"):
            return Outcome(False, ("roster-publish needs \"file\": an absolute path",), bad_input=True).reply()
        return (await commands.roster_publish(path)).reply()
    return {"ok": False, "problems": [f"unknown command {cmd!r}"]}


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def parse_request(line: bytes) -> dict[str, Any] | str:
    """The request on one line, or what is wrong with it (pure)."""
    if len(line) > MAX_REQUEST:
        return f"request too large (at most {MAX_REQUEST} bytes)"
    try:
        req = json.loads(line.decode("utf-8") or "{}")
    except UnicodeDecodeError:
        return "request is not UTF-8"
    except RecursionError:
        return "request nested too deeply"
    except ValueError:
        return "request is not JSON"
    if not isinstance(req, dict):
        return "request must be a JSON object"
    if not isinstance(req.get("cmd"), str):
        return "request needs a \"cmd\" string"
    return req


async def read_request(reader: asyncio.StreamReader) -> dict[str, Any] | str:
    """The one request a client sends, or what is wrong with it."""
    try:
        line = await asyncio.wait_for(reader.readuntil(b"\n"), timeout=REQUEST_TIMEOUT)
    except TimeoutError:
        return f"no request within {REQUEST_TIMEOUT:.0f} s"
    except asyncio.LimitOverrunError:
        return f"request too large (at most {MAX_REQUEST} bytes)"
    except asyncio.IncompleteReadError as e:
        line = e.partial  # no newline before EOF: judge what came
    return parse_request(line)


async def _serve_one(view: View, commands: Commands, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    reply: dict[str, Any]
    req = await read_request(reader)  # read even from a stranger: closing on unread data resets
    if _peer_uid(writer) not in (0, os.geteuid()):
        reply = {"ok": False, "problems": ["permission denied: the control socket answers root only"]}
    elif isinstance(req, str):
        reply = {"ok": False, "problems": [req], "bad_input": True}
    else:
        try:
            reply = await handle(view, commands, req)
        except Exception as e:  # noqa: BLE001 - a reply, not a silent close, whatever happened
            log.error("control request %r failed: %s", req.get("cmd"), e)
            log.debug("control request failed", exc_info=True)
            reply = {"ok": False, "problems": [f"dvpnd could not do {req.get('cmd')!r}: {e}"]}
    writer.write(json.dumps(reply).encode() + b"\n")
    await writer.drain()


async def start(view: View, commands: Commands, path: Path) -> ControlServer:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise DvpnError(f"{path}: exists and is not a socket; refusing to remove it (control.socket)")
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
            await _serve_one(view, commands, reader, writer)
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


def request(path: Path, cmd: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
    """Client side, used by dvpnctl. Raises DvpnError if the daemon cannot be reached."""
    try:
        data = unix_request(path, json.dumps(dict(args, cmd=cmd)).encode() + b"\n",
                            lambda tail: tail.endswith(b"\n"), timeout)
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
