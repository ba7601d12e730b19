"""Netlink, the few messages dvpnd sends, in dvpnd's own small codec.

- codec.py (pure): the message and attribute layout (man 7 netlink, man 7 rtnetlink).
- sock.py: one netlink socket, a request and its replies, the kernel's errno as an OSError.
- rtnl.py: links (by name, create, delete, MTU, up) and IPv4 addresses.
- genl.py: a generic netlink family's id by name (for WireGuard's).

Why not pyroute2: dvpnd needs a dozen messages. pyroute2 imports its whole package for any of
them (10 MiB of a node's RSS), its WireGuard codec has had the peer flag values wrong (0.7.2),
and it encodes and decodes a 1,000-peer device 10-50 times slower than the kernel answers.
"""
