"""The userspace backend: wireguard-go, driven over its UAPI socket. The wireguard-go process
runs in its own session so that it outlives dvpnd: the data plane does not depend on the
control plane being up."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from dvpnd.errors import BackendError
from dvpnd.util.procutil import child_env, wait_exit
from dvpnd.wireguard import uapi
from dvpnd.wireguard.device import DeviceChanges, DeviceState
from dvpnd.wireguard.links import delete_link, link_kind

log = logging.getLogger("dvpnd.backend")
# wireguard-go answers `get` in milliseconds; one that says nothing for this long is hung.
UAPI_LIVENESS_TIMEOUT = 5.0


class UserspaceBackend:
    name = "userspace"

    def __init__(self, ifname: str, state_dir: Path, binary: str = "wireguard-go"):
        self.ifname = ifname
        self.state_dir = state_dir
        self.binary = binary

    def _probe(self) -> str:
        """'ok', 'gone' (no socket, or nobody listening) or 'hung' (accepts but does not answer)."""
        try:
            uapi.uapi_request(self.ifname, "get=1\n\n", timeout=UAPI_LIVENESS_TIMEOUT)
            return "ok"
        except uapi.UapiTimeout:
            return "hung"
        except BackendError:
            return "gone"

    def create(self) -> None:
        kind = link_kind(self.ifname)
        if kind is not None:
            state = self._probe() if kind == "tun" else "foreign"
            if state == "ok":
                return
            if state == "hung":
                # Its data plane is dead too; only a new process brings the tunnel back.
                pid = uapi.uapi_peer_pid(self.ifname)
                log.error("wireguard-go%s for %s does not answer on its socket; replacing it",
                          f" (pid {pid})" if pid else "", self.ifname)
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    wait_exit(pid, 5)  # reaps it too, if it is our child
            else:
                log.warning("removing stale %s interface %s before starting wireguard-go", kind, self.ifname)
            delete_link(self.ifname)
        uapi.SOCKET_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        stale = uapi.socket_path(self.ifname)
        if stale.exists():
            stale.unlink()
        logfile = self.state_dir / f"wireguard-go-{self.ifname}.log"
        env = child_env(LOG_LEVEL="error")
        try:
            with open(logfile, "ab") as out:
                proc = subprocess.Popen(
                    [self.binary, "-f", self.ifname],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                    start_new_session=True, close_fds=True,
                )
        except FileNotFoundError:
            raise BackendError(f"{self.binary}: not found (install the wireguard-go package)") from None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._probe() == "ok":
                log.info("started wireguard-go for %s (pid %d)", self.ifname, proc.pid)
                return
            if proc.poll() is not None:
                raise BackendError(f"wireguard-go exited with status {proc.returncode}; see {logfile}")
            time.sleep(0.05)
        raise BackendError(f"wireguard-go did not open {uapi.socket_path(self.ifname)} within 10 s")

    def read(self, only: frozenset[str] | None = None) -> DeviceState:
        return uapi.parse_get(self.read_raw(), only)

    def read_raw(self) -> str:
        """wireguard-go's reply to `get=1`, not parsed (a reconcile with nothing to do compares
        its digest only)."""
        return uapi.uapi_request(self.ifname, "get=1\n\n")

    def apply(self, changes: DeviceChanges) -> None:
        reply = uapi.uapi_request(self.ifname, uapi.encode_set(changes))
        err = uapi.parse_errno(reply)
        if err != 0:
            raise BackendError(f"wireguard-go rejected the change for {self.ifname}: errno={err}")

    def delete(self) -> None:
        pid = uapi.uapi_peer_pid(self.ifname)
        delete_link(self.ifname)
        # wireguard-go exits when its tun goes away; make sure of it, by its PID only.
        if pid is not None:
            wait_exit(pid, 10)
