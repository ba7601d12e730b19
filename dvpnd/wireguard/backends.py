"""WireGuard backends: one protocol, two implementations, and the choice between them.

- kernel (kernel.py): the in-kernel module, driven over generic netlink.
- userspace (userspace.py): wireguard-go, driven over its UAPI socket.

Every write is followed by a read-back by the caller (reconcile), because flag handling
in netlink libraries has had bugs (pyroute2 0.7.2 has the peer flag values wrong; the kernel
backend's messages are dvpnd's own, dvpnd.netlink, with the kernel's values).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from dvpnd.errors import BackendError
from dvpnd.wireguard.device import DeviceChanges, DeviceState
from dvpnd.wireguard.kernel import KernelBackend
from dvpnd.wireguard.links import link_kind
from dvpnd.wireguard.userspace import UserspaceBackend

log = logging.getLogger("dvpnd.backend")


class Backend(Protocol):
    name: str
    ifname: str

    def create(self) -> None: ...
    def read(self, only: frozenset[str] | None = None) -> DeviceState:
        """The device; with `only`, its device fields and only those peers (the read-back of a
        write: what was written is verified without decoding every other peer)."""
        ...

    def read_raw(self) -> str | list[bytes] | None:
        """The device's state as the device answered it, unparsed: wireguard-go's reply to
        `get=1`, the kernel's netlink payloads; None where there is no such answer (a fake)."""
        ...

    def apply(self, changes: DeviceChanges) -> None: ...
    def delete(self) -> None: ...


def kernel_module_available() -> bool:
    return Path("/sys/module/wireguard").exists()


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
