"""The control socket against what a local client can send: every request gets a JSON reply,
a file at the socket's path is never removed, and only root is answered."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dvpnd.errors import DvpnError
from dvpnd.serve import control
from dvpnd.serve.api import Outcome

MALFORMED = [
    b"\xff\xfe{}\n",                                  # invalid UTF-8
    b"[" * 5000 + b"]" * 5000 + b"\n",                # deep JSON (over the size too)
    b"[" * 2000 + b"]" * 2000 + b"\n",                # deep JSON within the size
    b"x" * 9000 + b"\n",                              # a line over 8 KiB
    b"x" * 20000,                                     # no newline at all, then EOF
    b"\n",                                            # empty
    b"[]\n", b'"status"\n', b"42\n", b"null\n",      # not an object
    b'{"cmd": 5}\n', b'{"cmd": ["status"]}\n', b'{"cmd": {}}\n', b"{}\n",
    b'{"cmd": "nope"}\n',                             # unknown command
    b"{\n",                                           # broken JSON
    b'{"cmd": "status", "x": 1e999999}\n',            # a number Python reads as inf: still an object
]


class FakeCommands:
    """The control socket's side of the daemon (serve.api.Commands), as a test wants it."""

    async def reload(self) -> Outcome:
        raise RuntimeError("boom")

    async def rekey(self) -> Outcome:
        return Outcome(False, ("no key",))

    async def firewall_table(self) -> Outcome:
        return Outcome(True, data={"table": "table inet dvpn {}"})

    async def firewall_apply(self) -> Outcome:
        return Outcome(True)

    async def backup_now(self) -> Outcome:
        return Outcome(False, ("backups are not enabled",), bad_input=True)

    async def down(self) -> Outcome:
        return Outcome(True)

    async def roster_publish(self, path: str) -> Outcome:
        PUBLISHED.append(path)
        return Outcome(True, data={"serial": 1})


PUBLISHED: list[str] = []


def start(path: Path) -> Any:
    return control.start(SimpleNamespace(), FakeCommands(), path)


def ask(path: Path, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(str(path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    reply: dict[str, Any] = json.loads(out)
    return reply


def serve(path: Path, requests: list[bytes]) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        server = await start(path)
        try:
            return [await asyncio.to_thread(ask, path, r) for r in requests]
        finally:
            await server.close()
    return asyncio.run(go())


@pytest.fixture
def sock_path() -> Any:
    with tempfile.TemporaryDirectory(prefix="dvpn-ctl-") as d:
        yield Path(d) / "run" / "control.sock"


def test_every_malformed_request_gets_an_error_reply(sock_path: Path) -> None:
    replies = serve(sock_path, MALFORMED)
    assert len(replies) == len(MALFORMED) == 17
    for req, reply in zip(MALFORMED, replies, strict=True):
        assert reply["ok"] is False and reply["problems"], (req[:40], reply)
    assert replies[0]["problems"] == ["request is not UTF-8"]
    assert replies[3]["problems"] == ["request too large (at most 4096 bytes)"]
    assert replies[14]["problems"] == ["unknown command 'nope'"]


def test_a_command_that_fails_inside_dvpnd_still_gets_a_reply(sock_path: Path) -> None:
    (reply,) = serve(sock_path, [b'{"cmd": "reload"}\n'])
    assert reply == {"ok": False, "problems": ["dvpnd could not do 'reload': boom"]}


def test_a_file_at_the_socket_path_is_not_removed(sock_path: Path) -> None:
    sock_path.parent.mkdir()
    sock_path.write_text("precious")
    with pytest.raises(DvpnError, match="exists and is not a socket; refusing to remove it"):
        asyncio.run(start(sock_path))
    assert sock_path.read_text() == "precious"


@pytest.mark.process
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_a_peer_that_is_not_root_is_refused(sock_path: Path) -> None:
    async def go() -> dict[str, Any]:
        server = await start(sock_path)
        os.chmod(sock_path, 0o666)  # the file mode aside: the daemon itself checks who calls
        os.chmod(sock_path.parent, 0o755)
        os.chmod(sock_path.parent.parent, 0o755)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                os.write(w, json.dumps(ask(sock_path, b'{"cmd": "status"}\n')).encode())
            except BaseException as e:  # noqa: BLE001
                os.write(w, json.dumps({"child": repr(e)}).encode())
            finally:
                os._exit(0)
        os.close(w)
        data = await asyncio.to_thread(os.read, r, 65536)
        await asyncio.to_thread(os.waitpid, pid, 0)
        await server.close()
        return json.loads(data)  # type: ignore[no-any-return]
    reply = asyncio.run(go())
    assert reply == {"ok": False, "problems": ["permission denied: the control socket answers root only"]}


def test_commands_answer_through_their_outcome(sock_path: Path) -> None:
    replies = serve(sock_path, [b'{"cmd": "firewall"}\n', b'{"cmd": "backup-now"}\n', b'{"cmd": "rekey"}\n'])
    assert replies == [
        {"ok": True, "problems": [], "bad_input": False, "table": "table inet dvpn {}"},
        {"ok": False, "problems": ["backups are not enabled"], "bad_input": True},
        {"ok": False, "problems": ["no key"], "bad_input": False},
    ]


def test_roster_publish_takes_only_an_absolute_file_path(sock_path: Path) -> None:
    PUBLISHED.clear()
    bad = [b'{"cmd": "roster-publish"}\n', b'{"cmd": "roster-publish", "file": "roster.json"}\n',
           b'{"cmd": "roster-publish", "file": ["/x"]}\n', b'{"cmd": "roster-publish", "file": 7}\n']
    replies = serve(sock_path, bad + [b'{"cmd": "roster-publish", "file": "/srv/roster.json"}\n'])
    for reply in replies[:-1]:
        assert reply["ok"] is False and reply["bad_input"] and "absolute path" in reply["problems"][0]
    assert replies[-1]["ok"] and PUBLISHED == ["/srv/roster.json"]
