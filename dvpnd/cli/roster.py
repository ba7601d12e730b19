"""dvpnctl's authority and roster commands.

`authority` and `roster add/remove/rotate/renew/show` run on the operator's machine, where the
authority key lives (never on the hub); `roster publish` runs on the node that should take a
signed roster file (the hub, which then serves it to the spokes)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from dvpnd.cli.common import BadInput
from dvpnd.config.model import DEFAULT_NETWORK, DEFAULT_TRANSIT_NETWORK
from dvpnd.errors import EXIT_BAD_INPUT, EXIT_FAILURE
from dvpnd.roster.authority import Authority, Ed25519Verifier, verify_document
from dvpnd.roster.model import LABEL_RE, Member, Roster, RosterError
from dvpnd.util.fsutil import read_regular
from dvpnd.wireguard.keytext import decode_key

DEFAULT_AUTHORITY_DIR = Path(os.environ.get("DVPN_AUTHORITY_DIR", Path.home() / ".dvpn-authority"))
DAY = 86400


def _duration_days(text: str) -> int:
    if not text.endswith("d") or not text[:-1].isdigit() or not 1 <= int(text[:-1]) <= 3650:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of days, e.g. 90d (1 to 3650)")
    return int(text[:-1]) * DAY


def add_arguments(sub: Any) -> None:
    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", type=Path, default=DEFAULT_AUTHORITY_DIR,
                       help="the authority directory (default $DVPN_AUTHORITY_DIR or ~/.dvpn-authority); "
                            "keep it off the hub")
        return p

    au = sub.add_parser("authority", help="the roster authority (on the operator's machine, never the hub)")
    aus = au.add_subparsers(dest="authority", required=True)
    with_dir(aus.add_parser("init", help="make the authority key (0600) and print its public half")) \
        .set_defaults(func=cmd_authority_init)
    with_dir(aus.add_parser("show", help="print the authority's public key")).set_defaults(func=cmd_authority_show)

    ro = sub.add_parser("roster", help="the signed roster: who the overlay's members are")
    ros = ro.add_subparsers(dest="roster", required=True)
    p = with_dir(ros.add_parser("add", help="add a member; sign a new roster; print its join settings"))
    p.add_argument("name")
    p.add_argument("--transit-key", required=True, help="the spoke's `dvpnctl pubkey`")
    p.add_argument("--overlay-key", required=True, help="the spoke's `dvpnctl pubkey --overlay`")
    p.add_argument("--address", type=IPv4Address, help="its overlay address (default: the next free one from .11)")
    p.add_argument("--network", type=IPv4Network, default=IPv4Network(DEFAULT_NETWORK),
                   help="the overlay (for the first member only)")
    p.add_argument("--alias", action="append", default=[], metavar="LABEL",
                   help="another name for its address in the overlay's DNS (repeatable), e.g. pg-a")
    p.add_argument("--valid", type=_duration_days, default=90 * DAY, help="how long the new roster is valid (90d)")
    p.set_defaults(func=cmd_roster_add)
    p = with_dir(ros.add_parser("alias", help="set a member's aliases (none: clear them); sign a new roster"))
    p.add_argument("name")
    p.add_argument("aliases", nargs="*", metavar="LABEL")
    p.add_argument("--valid", type=_duration_days, default=90 * DAY, help="how long the new roster is valid (90d)")
    p.set_defaults(func=cmd_roster_alias)
    p = with_dir(ros.add_parser("remove", help="remove a member; sign a new roster"))
    p.add_argument("name")
    p.add_argument("--valid", type=_duration_days, default=90 * DAY)
    p.set_defaults(func=cmd_roster_remove)
    p = with_dir(ros.add_parser("rotate", help="give a member new keys; sign a new roster"))
    p.add_argument("name")
    p.add_argument("--transit-key")
    p.add_argument("--overlay-key")
    p.add_argument("--valid", type=_duration_days, default=90 * DAY)
    p.set_defaults(func=cmd_roster_rotate)
    p = with_dir(ros.add_parser("renew", help="the same members, a new serial and expiry"))
    p.add_argument("--valid", type=_duration_days, default=90 * DAY)
    p.set_defaults(func=cmd_roster_renew)
    p = with_dir(ros.add_parser("show", help="the roster this authority signed last (or FILE, verified)"))
    p.add_argument("file", nargs="?", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_roster_show)
    p = with_dir(ros.add_parser("wg-quick", help="the two wg-quick files for a member without dvpnd (a laptop)"))
    p.add_argument("name")
    p.add_argument("--hub-key", required=True, help="the hub's public key (dvpnctl pubkey on the hub)")
    p.add_argument("--hub-endpoint", required=True, help="host:port of the hub")
    p.add_argument("--transit-network", type=IPv4Network, default=IPv4Network(DEFAULT_TRANSIT_NETWORK))
    p.set_defaults(func=cmd_roster_wg_quick)
    p = ros.add_parser("publish", help="on a node (the hub): take a signed roster file; spokes fetch it from the hub")
    from dvpnd.cli.common import config_arg

    config_arg(p)
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_roster_publish)


def cmd_authority_init(args: argparse.Namespace) -> int:
    pub = Authority(args.dir).init()
    print(f"authority key: {args.dir / 'authority.key'} (0600; keep it off the hub, back it up offline)")
    print(f"public key (overlay.authority on every node): {pub}")
    return 0


def cmd_authority_show(args: argparse.Namespace) -> int:
    print(Authority(args.dir).public())
    return 0


def _key(text: str, what: str) -> str:
    try:
        if decode_key(text) == bytes(32):
            raise ValueError("is the all-zero key")
    except ValueError as e:
        raise BadInput(f"{what} {e}") from None
    return text.strip()


def _sign(auth: Authority, members: tuple[Member, ...], valid: int, network: IPv4Network | None = None) -> Roster:
    try:
        return auth.amend(members, valid, network)
    except RosterError as e:
        raise BadInput(str(e)) from None


def _published(auth: Authority, roster: Roster, what: str) -> None:
    print(f"{what}: roster serial {roster.serial}, {len(roster.members)} members, valid until "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(roster.expires))}")
    print(f"now on the hub: dvpnctl roster publish {auth.roster_file}   (spokes fetch it within seconds)")


def cmd_roster_add(args: argparse.Namespace) -> int:
    auth = Authority(args.dir)
    old = auth.current()
    network = old.network if old else args.network
    if not LABEL_RE.match(args.name):
        raise BadInput(f"{args.name!r} is not a DNS label (a-z, 0-9 and '-', at most 63)")
    members = old.members if old else ()
    if any(m.name == args.name for m in members):
        raise BadInput(f"{args.name} is a member already (dvpnctl roster rotate changes its keys)")
    taken = {m.address for m in members}
    address = args.address
    if address is None:
        hosts = list(network.hosts())[10:]
        address = next((h for h in hosts if h not in taken), None)
        if address is None:
            raise BadInput(f"no free address left in {network}")
    member = Member(name=args.name, address=address, transit_key=_key(args.transit_key, "--transit-key"),
                    overlay_key=_key(args.overlay_key, "--overlay-key"),
                    aliases=_aliases(args.alias, args.name))
    new = _sign(auth, members + (member,), args.valid, network)
    _published(auth, new, f"added {member.name} at {member.address}")
    print(f"\n# the spoke's join settings (its dvpnd.yaml):\noverlay:\n  mode: confidential\n"
          f"  network: {network}\n  address: {member.address}\n  authority: {auth.public()}\n"
          f"  min_serial: {new.serial}   # it refuses any older roster, even with no state of its own")
    return 0


def _aliases(given: list[str], owner: str) -> tuple[str, ...]:
    """The aliases as given, lower case, without repeats or the member's own name; the rest (DNS
    labels, at most MAX_ALIASES, nobody else's name or alias) is checked where every node checks
    it, when the roster is made (parse_payload)."""
    return tuple(dict.fromkeys(a.lower() for a in given if a.lower() != owner))


def cmd_roster_alias(args: argparse.Namespace) -> int:
    auth = Authority(args.dir)
    old, m = _existing(auth, args.name)
    changed = replace(m, aliases=_aliases(args.aliases, m.name))
    if changed == m:
        print(f"{m.name}: aliases unchanged ({', '.join(m.aliases) or 'none'}); no new roster")
        return 0
    new = _sign(auth, tuple(changed if x.name == m.name else x for x in old.members), args.valid)
    _published(auth, new, f"{m.name}: aliases {', '.join(changed.aliases) or 'none'}")
    return 0


def _existing(auth: Authority, name: str) -> tuple[Roster, Member]:
    old = auth.current()
    if old is None:
        raise BadInput(f"{auth.roster_file}: no roster yet (dvpnctl roster add makes the first)")
    m = old.member(name)
    if m is None:
        raise BadInput(f"{name} is not a member (members: {', '.join(x.name for x in old.members) or 'none'})")
    return old, m


def cmd_roster_remove(args: argparse.Namespace) -> int:
    auth = Authority(args.dir)
    old, m = _existing(auth, args.name)
    new = _sign(auth, tuple(x for x in old.members if x.name != m.name), args.valid)
    _published(auth, new, f"removed {m.name} ({m.address})")
    return 0


def cmd_roster_rotate(args: argparse.Namespace) -> int:
    auth = Authority(args.dir)
    old, m = _existing(auth, args.name)
    if not args.transit_key and not args.overlay_key:
        raise BadInput("give --transit-key, --overlay-key or both (the spoke's new public keys)")
    changed = replace(m, transit_key=_key(args.transit_key, "--transit-key") if args.transit_key else m.transit_key,
                      overlay_key=_key(args.overlay_key, "--overlay-key") if args.overlay_key else m.overlay_key)
    new = _sign(auth, tuple(changed if x.name == m.name else x for x in old.members), args.valid)
    _published(auth, new, f"new keys for {m.name}")
    return 0


def cmd_roster_renew(args: argparse.Namespace) -> int:
    auth = Authority(args.dir)
    old = auth.current()
    if old is None:
        raise BadInput(f"{auth.roster_file}: no roster yet")
    new = _sign(auth, old.members, args.valid)
    _published(auth, new, "renewed")
    return 0


def cmd_roster_show(args: argparse.Namespace) -> int:
    auth = Authority(args.dir)
    if args.file is None:
        roster = auth.current()
        if roster is None:
            raise BadInput(f"{auth.roster_file}: no roster yet")
    else:
        text = read_regular(args.file, 4 << 20, follow_links=True)
        if text is None:
            raise BadInput(f"{args.file}: no such file")
        try:
            roster, _ = verify_document(text.encode(), Ed25519Verifier(auth.public()), str(args.file))
        except RosterError as e:
            raise BadInput(str(e)) from None
    if args.json:
        print(json.dumps({"serial": roster.serial, "issued": roster.issued, "expires": roster.expires,
                          "network": str(roster.network),
                          "members": [{"name": m.name, "address": str(m.address), "transit_key": m.transit_key,
                                       "overlay_key": m.overlay_key, "aliases": list(m.aliases)}
                                      for m in roster.members]}, indent=2))
        return 0
    print(f"serial {roster.serial}, {roster.network}, expires "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(roster.expires))}")
    for m in roster.members:
        print(f"  {m.name:<16} {str(m.address):<15} transit {m.transit_key}  overlay {m.overlay_key}"
              + (f"  aliases {', '.join(m.aliases)}" if m.aliases else ""))
    return 0


def cmd_roster_wg_quick(args: argparse.Namespace) -> int:
    from dvpnd.overlay.wgquick import render_wg_quick

    auth = Authority(args.dir)
    roster, me = _existing(auth, args.name)
    _key(args.hub_key, "--hub-key")
    for name, text in render_wg_quick(roster, me, args.hub_key, args.hub_endpoint, args.transit_network).items():
        print(f"### /etc/wireguard/{name}\n{text}")
    return 0


def cmd_roster_publish(args: argparse.Namespace) -> int:
    import tempfile

    from dvpnd.cli.common import load
    from dvpnd.errors import DvpnError
    from dvpnd.serve import control
    from dvpnd.util.fsutil import UnsafeFile

    config = load(args.config)
    # Read here, with the caller's view of the files: dvpnd's unit hides /home, /root and /tmp
    # (ProtectHome, PrivateTmp), so the file goes to dvpnd as a copy in its own state directory.
    try:
        text = read_regular(args.file, 4 << 20, follow_links=True)
    except UnsafeFile as e:
        raise BadInput(str(e)) from None
    if text is None:
        raise BadInput(f"{args.file}: no such file")
    # a name of its own (two publishes at once do not remove each other's copy), 0600 (mkstemp)
    try:
        fd, name = tempfile.mkstemp(prefix="roster.offered.", dir=config.state_dir)
    except OSError as e:
        raise DvpnError(f"{config.state_dir}: cannot hand dvpnd the roster there ({e.strerror}); "
                        "is dvpnd running with this config?") from None
    staged = Path(name)
    with open(fd, "wb") as f:
        f.write(text.encode())
    try:
        reply = control.request(config.control_socket, "roster-publish", file=str(staged))
    finally:
        staged.unlink(missing_ok=True)
    if not reply.get("ok"):
        for p in reply.get("problems", []):
            print(f"dvpnctl: {str(p).replace(str(staged), str(args.file))}", file=sys.stderr)
        return EXIT_BAD_INPUT if reply.get("bad_input") else EXIT_FAILURE
    print(f"roster serial {reply['serial']} in force ({reply['members']} members)"
          + ("" if reply.get("adopted") else "; it already was"))
    return 0
