"""WireGuard backends: one protocol, two implementations.

- kernel: the in-kernel module, driven over generic netlink (pyroute2's wgmsg codec).
- userspace: wireguard-go, driven over its UAPI socket. The wireguard-go process runs in
  its own session so that it outlives dvpnd: the data plane does not depend on the
  control plane being up.

Every write is followed by a read-back by the caller (reconcile), because flag handling
in netlink libraries has had bugs (pyroute2 0.7.2 has the peer flag values wrong, which
is why the kernel backend builds its own messages with the kernel's values).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Protocol

from dvpnd import uapi
from dvpnd.errors import BackendError
from dvpnd.procutil import wait_exit
from dvpnd.wgstate import DeviceChanges, DeviceState, PeerState, normalize_cidr

log = logging.getLogger("dvpnd.backend")

# From the kernel's include/uapi/linux/wireguard.h.
WGDEVICE_F_REPLACE_PEERS = 1 << 0
WGPEER_F_REMOVE_ME = 1 << 0
WGPEER_F_REPLACE_ALLOWEDIPS = 1 << 1
WGPEER_F_UPDATE_ONLY = 1 << 2
# Peers per netlink SET message; wireguard-tools also splits big devices over messages.
NETLINK_PEERS_PER_MESSAGE = 64
# wireguard-go answers `get` in milliseconds; one that says nothing for this long is hung.
UAPI_LIVENESS_TIMEOUT = 5.0


class Backend(Protocol):
    name: str
    ifname: str

    def create(self) -> None: ...
    def read(self) -> DeviceState: ...
    def apply(self, changes: DeviceChanges) -> None: ...
    def delete(self) -> None: ...


def link_kind(ifname: str) -> str | None:
    """'wireguard' for a kernel device, 'tun' for wireguard-go, None if absent."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=ifname)
        if not links:
            return None
        msg = ipr.get_links(links[0])[0]
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        return str(kind) if kind else "unknown"


def delete_link(ifname: str) -> bool:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return False
        try:
            ipr.link("del", index=idx[0])
        except NetlinkError as e:
            if e.code != 19:  # ENODEV: gone meanwhile
                raise BackendError(f"cannot delete {ifname}: {e}") from None
        return True


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
        env = dict(os.environ, LOG_LEVEL="error")
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

    def read(self) -> DeviceState:
        return uapi.parse_get(uapi.uapi_request(self.ifname, "get=1\n\n"))

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


class KernelBackend:
    name = "kernel"

    def __init__(self, ifname: str):
        self.ifname = ifname

    def create(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        kind = link_kind(self.ifname)
        if kind == "wireguard":
            return
        if kind is not None:
            log.warning("removing %s interface %s to create a kernel WireGuard device", kind, self.ifname)
            delete_link(self.ifname)
        with IPRoute() as ipr:
            try:
                ipr.link("add", ifname=self.ifname, kind="wireguard")
            except NetlinkError as e:
                raise BackendError(f"cannot create kernel WireGuard interface {self.ifname}: {e}") from None
        log.info("created kernel WireGuard interface %s", self.ifname)

    def _socket(self) -> Any:
        from pyroute2 import WireGuard

        try:
            return WireGuard()
        except Exception as e:  # noqa: BLE001 - pyroute2 raises several types here
            raise BackendError(f"WireGuard generic netlink family unavailable: {e}") from None

    def read(self) -> DeviceState:
        wg = self._socket()
        try:
            msgs = list(wg.info(self.ifname))
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"cannot read {self.ifname}: {e}") from None
        finally:
            wg.close()
        return parse_netlink_device(msgs)

    def apply(self, changes: DeviceChanges) -> None:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
        from pyroute2.netlink.generic.wireguard import WG_CMD_SET_DEVICE, WG_GENL_VERSION, wgmsg

        wg = self._socket()
        try:
            for attrs in build_netlink_set(self.ifname, changes):
                msg = wgmsg()
                msg["cmd"] = WG_CMD_SET_DEVICE
                msg["version"] = WG_GENL_VERSION
                msg["attrs"] = attrs
                list(wg.nlm_request(msg, msg_type=wg.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))
        except BackendError:
            raise
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"kernel rejected the change for {self.ifname}: {e}") from None
        finally:
            wg.close()

    def delete(self) -> None:
        delete_link(self.ifname)


def build_netlink_set(ifname: str, changes: DeviceChanges) -> list[list[list[Any]]]:
    """Attribute lists for WG_CMD_SET_DEVICE messages (pure), peers split over messages."""
    head: list[list[Any]] = [["WGDEVICE_A_IFNAME", ifname]]
    if changes.private_key is not None:
        head.append(["WGDEVICE_A_PRIVATE_KEY", {"value": changes.private_key}])
    if changes.listen_port is not None:
        head.append(["WGDEVICE_A_LISTEN_PORT", changes.listen_port])
    peer_attrs: list[dict[str, Any]] = []
    for p in changes.peers:
        attrs: list[list[Any]] = [["WGPEER_A_PUBLIC_KEY", {"value": p.public_key}]]
        flags = 0
        if p.remove:
            flags |= WGPEER_F_REMOVE_ME
        else:
            if not p.create:
                flags |= WGPEER_F_UPDATE_ONLY
            if p.allowed_ips is not None:
                flags |= WGPEER_F_REPLACE_ALLOWEDIPS
            if p.endpoint is not None:
                host, _, port = p.endpoint.rpartition(":")
                attrs.append(["WGPEER_A_ENDPOINT", {"addr": host.strip("[]"), "port": int(port)}])
            if p.persistent_keepalive is not None:
                attrs.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", p.persistent_keepalive])
            if p.allowed_ips is not None:
                ips = []
                for cidr in sorted(p.allowed_ips):
                    net = ip_network(cidr)
                    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
                    ips.append({"attrs": [["WGALLOWEDIP_A_FAMILY", family],
                                          ["WGALLOWEDIP_A_IPADDR", net.network_address.packed],
                                          ["WGALLOWEDIP_A_CIDR_MASK", net.prefixlen]]})
                attrs.append(["WGPEER_A_ALLOWEDIPS", ips])
        attrs.append(["WGPEER_A_FLAGS", flags])
        peer_attrs.append({"attrs": attrs})
    if not peer_attrs:
        return [head]
    messages = []
    for i in range(0, len(peer_attrs), NETLINK_PEERS_PER_MESSAGE):
        chunk = peer_attrs[i:i + NETLINK_PEERS_PER_MESSAGE]
        # Device attributes go once, in the first message.
        attrs0 = head if i == 0 else head[:1]
        messages.append(attrs0 + [["WGDEVICE_A_PEERS", chunk]])
    return messages


def parse_netlink_device(msgs: list[Any]) -> DeviceState:
    """A DeviceState from WG_CMD_GET_DEVICE replies (a big device spans several messages)."""
    private_key = public = None
    listen_port = fwmark = 0
    peers: dict[str, PeerState] = {}
    for msg in msgs:
        pk = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if pk is not None:
            private_key = _key_text(pk)
        pub = msg.get_attr("WGDEVICE_A_PUBLIC_KEY")
        if pub is not None:
            public = _key_text(pub)
        listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or listen_port
        fwmark = msg.get_attr("WGDEVICE_A_FWMARK") or fwmark
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
            key = _key_text(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
            ep = peer.get_attr("WGPEER_A_ENDPOINT")
            endpoint = None
            if ep is not None and ep.get("addr") and ep.get("port"):
                addr = ep["addr"]
                endpoint = f"[{addr}]:{ep['port']}" if ":" in addr else f"{addr}:{ep['port']}"
            hs = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            handshake = None
            if hs is not None and (hs.get("tv_sec") or hs.get("tv_nsec")):
                handshake = hs["tv_sec"] + hs["tv_nsec"] / 1e9
            ips = set()
            for aip in peer.get_attr("WGPEER_A_ALLOWEDIPS") or []:
                if aip.get("addr"):
                    ips.add(normalize_cidr(aip["addr"]))
            prev = peers.get(key)
            if prev is not None:  # a peer continued from the previous message
                ips |= prev.allowed_ips
            peers[key] = PeerState(
                public_key=key, allowed_ips=frozenset(ips), endpoint=endpoint or (prev.endpoint if prev else None),
                persistent_keepalive=peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
                last_handshake=handshake, rx_bytes=peer.get_attr("WGPEER_A_RX_BYTES") or 0,
                tx_bytes=peer.get_attr("WGPEER_A_TX_BYTES") or 0,
            )
    return DeviceState(private_key=private_key, public_key=public, listen_port=listen_port,
                       fwmark=fwmark, peers=peers)


def _key_text(attr: Any) -> str:
    """pyroute2 decodes keys to base64 bytes (0.7) or a dict with 'value'; normalize to str."""
    value = attr.get("value") if isinstance(attr, dict) else attr
    if isinstance(value, bytes):
        value = value.decode("ascii")
    return str(value)


def kernel_module_available() -> bool:
    return Path("/sys/module/wireguard").exists()


def select_backend(kind: str, ifname: str, state_dir: Path) -> Backend:
    """The backend for `wireguard.backend`; `auto` follows an existing device, else the kernel if it has WireGuard."""
    if kind == "kernel":
        return KernelBackend(ifname)
    if kind == "userspace":
        return UserspaceBackend(ifname, state_dir)
    existing = link_kind(ifname)
    if existing == "wireguard":
        return KernelBackend(ifname)
    if existing == "tun":
        return UserspaceBackend(ifname, state_dir)
    if kernel_module_available() or _kernel_creates_link(ifname):
        return KernelBackend(ifname)
    return UserspaceBackend(ifname, state_dir)


def _kernel_creates_link(ifname: str) -> bool:
    """Ask the kernel for a WireGuard link; it loads its module on demand if it has one.

    No modprobe of our own: under the unit's ProtectKernelModules= dvpnd cannot load modules,
    but the kernel's on-demand loading (rtnl-link-wireguard) still works. The link is kept: it
    is the interface the kernel backend would create next anyway.
    """
    try:
        KernelBackend(ifname).create()
    except BackendError as e:
        log.debug("no kernel WireGuard: %s", e)
        return False
    return kernel_module_available()
