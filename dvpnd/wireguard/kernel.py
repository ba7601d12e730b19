"""The kernel backend: the in-kernel module, driven over generic netlink (dvpnd.netlink's codec)."""

from __future__ import annotations

import logging

from dvpnd.errors import BackendError
from dvpnd.netlink import codec, genl, rtnl
from dvpnd.netlink.sock import Netlink
from dvpnd.wireguard.device import DeviceChanges, DeviceState
from dvpnd.wireguard.links import delete_link, link_kind
from dvpnd.wireguard.netlink import WG_GENL_NAME, build_netlink_get, build_netlink_set, parse_netlink_device

log = logging.getLogger("dvpnd.backend")


def parse_device(ifname: str, payloads: list[bytes], only: frozenset[str] | None = None) -> DeviceState:
    try:
        return parse_netlink_device(payloads, only)
    except (ValueError, KeyError) as e:
        raise BackendError(f"cannot parse {ifname}'s state from the kernel: {e}") from None


class KernelBackend:
    name = "kernel"

    def __init__(self, ifname: str):
        self.ifname = ifname

    def create(self) -> None:
        kind = link_kind(self.ifname)
        if kind == "wireguard":
            return
        if kind is not None:
            log.warning("removing %s interface %s to create a kernel WireGuard device", kind, self.ifname)
            delete_link(self.ifname)
        try:
            with rtnl.route() as nl:
                rtnl.add_link(nl, self.ifname, "wireguard")
        except OSError as e:
            raise BackendError(f"cannot create kernel WireGuard interface {self.ifname}: {e.strerror}") from None
        log.info("created kernel WireGuard interface %s", self.ifname)

    def _socket(self) -> tuple[Netlink, int]:
        """A generic netlink socket and WireGuard's family id on it."""
        nl = genl.generic()
        try:
            return nl, genl.family_id(nl, WG_GENL_NAME)
        except OSError as e:
            nl.close()
            raise BackendError(f"WireGuard generic netlink family unavailable: {e.strerror}") from None

    def read(self, only: frozenset[str] | None = None) -> DeviceState:
        return parse_device(self.ifname, self.read_raw(), only)

    def read_raw(self) -> list[bytes]:
        """The kernel's WG_CMD_GET_DEVICE replies (their generic netlink payloads), unparsed."""
        nl, family = self._socket()
        try:
            return nl.request(family, build_netlink_get(self.ifname), codec.NLM_F_DUMP,
                              what=f"cannot read {self.ifname}")
        except OSError as e:
            raise BackendError(f"cannot read {self.ifname}: {e.strerror}") from None
        finally:
            nl.close()

    def apply(self, changes: DeviceChanges) -> None:
        nl, family = self._socket()
        try:
            for payload in build_netlink_set(self.ifname, changes):
                nl.request(family, payload, what=f"kernel rejected the change for {self.ifname}")
        except OSError as e:
            raise BackendError(f"kernel rejected the change for {self.ifname}: {e.strerror}") from None
        finally:
            nl.close()

    def delete(self) -> None:
        delete_link(self.ifname)
