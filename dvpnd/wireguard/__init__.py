"""WireGuard: the device model and diff (pure), keys, the UAPI and netlink codecs, the backends."""
