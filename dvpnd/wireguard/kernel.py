"""The kernel backend: the in-kernel module, driven over generic netlink (pyroute2's wgmsg codec)."""

from __future__ import annotations

import logging
from typing import Any

from dvpnd.errors import BackendError
from dvpnd.wireguard.device import DeviceChanges, DeviceState
from dvpnd.wireguard.links import delete_link, link_kind
from dvpnd.wireguard.netlink import build_netlink_set, parse_netlink_device

log = logging.getLogger("dvpnd.backend")


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

    def read_text(self) -> None:
        """No text: the kernel answers in netlink messages, parsed by read()."""
        return None

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
