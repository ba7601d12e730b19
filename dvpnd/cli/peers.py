"""dvpnctl's membership runbooks: spoke add/remove/rotate on the hub, rotate-key on a spoke; each
undone whole when the daemon refuses it or does not answer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dvpnd.cli.common import BadInput, load, request
from dvpnd.errors import DvpnError
from dvpnd.util.fsutil import write_yaml


def _reload_or_undo(args: argparse.Namespace, undo: Any) -> None:
    """Ask the daemon to reload; if it refuses or does not answer, put the peers.d file back as
    it was (the daemon keeps its previous configuration when it refuses one)."""
    try:
        reply = request(args, "reload")
    except DvpnError as e:
        undo()
        raise DvpnError(f"{e}; the change was undone (start dvpnd, then run this again)") from None
    if not reply.get("ok"):
        undo()
        raise DvpnError("dvpnd refused the change, which was undone: " + "; ".join(reply.get("problems", [])))


def _restore(path: Path, old: bytes | None) -> Any:
    def undo() -> None:
        from dvpnd.util.fsutil import write_atomic

        if old is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, old)
    return undo


def cmd_spoke_add(args: argparse.Namespace) -> int:
    import yaml

    from dvpnd.config import peers as runbook
    from dvpnd.config.fields import check_name
    from dvpnd.wireguard.keys import encode_key, load_or_create_private_key, public_key

    config = load(args.config)
    if problem := check_name(args.name):
        raise BadInput(f"NAME {problem}")
    address = runbook.check_new_spoke(config, args.name, args.pubkey, args.address)
    path = config.peers_dir / f"{args.name}.yaml"
    if path.exists():
        raise BadInput(f"{path} exists already")
    write_yaml(path, runbook.render_peer_file(args.name, args.pubkey, address))
    _reload_or_undo(args, _restore(path, None))
    raw, _ = load_or_create_private_key(config.wireguard.private_key_file)
    print(f"# added spoke {args.name} ({address}) in {path}; its /etc/dvpn/dvpnd.yaml:")
    print(yaml.safe_dump(runbook.render_spoke_config(config, encode_key(public_key(raw)), args.name, address),
                         sort_keys=False), end="")
    return 0


def cmd_spoke_remove(args: argparse.Namespace) -> int:
    from dvpnd.config import peers as runbook

    config = load(args.config)
    path = runbook.peer_file_of(config, args.name)
    old = path.read_bytes()
    path.unlink()
    _reload_or_undo(args, _restore(path, old))
    print(f"removed spoke {args.name} ({path})")
    return 0


def cmd_spoke_rotate(args: argparse.Namespace) -> int:
    from dvpnd.config import peers as runbook
    from dvpnd.wireguard.keys import decode_key

    config = load(args.config)
    try:
        decode_key(args.pubkey)
    except ValueError as e:
        raise BadInput(f"--pubkey {e}") from None
    spoke = runbook.find_spoke(config, args.name)
    if args.pubkey == spoke.public_key:
        raise BadInput(f"spoke {args.name!r} already uses that key")
    path = runbook.peer_file_of(config, args.name)
    old = path.read_bytes()
    write_yaml(path, runbook.render_peer_file(spoke.name, spoke.public_key, spoke.address, args.pubkey))
    _reload_or_undo(args, _restore(path, old))
    print(f"spoke {args.name} may now switch to its new key: run 'dvpnctl rotate-key --commit' on it;\n"
          "the hub moves its address to the new key at its first handshake and then drops the old key")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from dvpnd.util.fsutil import fsync_dir, write_atomic
    from dvpnd.wireguard.keys import encode_key, generate_private_key, load_or_create_private_key, public_key

    config = load(args.config)
    if config.is_hub:
        raise BadInput("rotate-key runs on a spoke; a hub key change means reconfiguring every spoke")
    key_file = config.wireguard.private_key_file
    nxt = key_file.with_name(key_file.name + ".next")
    if not args.commit:
        if nxt.exists():
            raw, _ = load_or_create_private_key(nxt)
        else:
            raw = generate_private_key()
            write_atomic(nxt, (encode_key(raw) + "\n").encode(), mode=0o600)
        new_pub = encode_key(public_key(raw))
        print(new_pub)
        print("# the old key stays in use. On the hub run:\n"
              f"#   dvpnctl spoke rotate {config.name} --pubkey {new_pub}\n"
              "# then here: dvpnctl rotate-key --commit", file=sys.stderr)
        return 0
    if not nxt.exists():
        raise BadInput(f"{nxt} does not exist: run 'dvpnctl rotate-key' first")
    load_or_create_private_key(nxt)  # refuses a bad file before anything moves
    load_or_create_private_key(key_file)
    old = key_file.with_name(key_file.name + ".old")
    current, new = key_file.read_bytes(), nxt.read_bytes()
    # The key file is never missing: a copy of the old key first, then one atomic switch. A
    # crash anywhere leaves a key in place and the other beside it, and each step below is
    # undone in reverse if a later one fails (the daemon refusing, or not answering).
    undo: list[Callable[[], None]] = []
    try:
        write_atomic(old, current, mode=0o600)
        undo.append(lambda: old.unlink(missing_ok=True))
        write_atomic(key_file, new, mode=0o600)
        undo.append(lambda: write_atomic(key_file, current, mode=0o600))
        nxt.unlink()
        fsync_dir(nxt.parent)
        undo.append(lambda: write_atomic(nxt, new, mode=0o600))
        reply = request(args, "rekey")
        if not reply.get("ok"):
            raise DvpnError("dvpnd could not use the new key: " + "; ".join(reply.get("problems", [])))
    except BaseException as e:
        for step in reversed(undo):
            step()
        try:
            request(args, "rekey")  # back on the old key, if the daemon had taken the new one
        except DvpnError:
            pass
        if isinstance(e, DvpnError):
            raise DvpnError(f"{e}; the old key is back in {key_file}, the new one in {nxt}") from None
        raise
    old.unlink()  # no use once dvpnd runs on the new key: no old identity left on disk
    fsync_dir(old.parent)
    print("now using the new key (the old one is deleted)")
    return 0


def _edit_hubs(args: argparse.Namespace, edit: Callable[[dict[str, Any]], dict[str, Any]], done: str) -> int:
    """Edit the spoke's hubs: the new file is checked with the loader before it replaces the old
    one (kept beside it); a restart uses it (a reload refuses a change of hubs)."""
    import yaml

    from dvpnd.config.hubedit import HubEditError
    from dvpnd.config.load import load_config
    from dvpnd.errors import ConfigError
    from dvpnd.util.fsutil import write_atomic

    path: Path = args.config
    old = path.read_bytes()
    doc = yaml.safe_load(old)
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: not a mapping")
    try:
        new = edit(doc)
    except HubEditError as e:
        raise BadInput(str(e)) from None
    trial = path.with_name(f".{path.name}.hub-edit")
    write_yaml(trial, new, mode=0o600)
    try:
        load_config(trial)
    except ConfigError as e:
        raise BadInput("the edited config would be refused, nothing changed:\n  "
                       + "\n  ".join(p.replace(str(trial), str(path)) for p in e.problems)) from None
    finally:
        trial.unlink(missing_ok=True)
    backup = path.with_name(path.name + ".before-hub-edit")
    write_atomic(backup, old, mode=0o600)
    write_yaml(path, new, mode=path.stat().st_mode & 0o777)
    print(f"{done} in {path} (the previous file, with its comments: {backup})")
    print("restart dvpnd to use it: systemctl restart dvpnd (a reload refuses a change of hubs)")
    return 0


def cmd_hub_add(args: argparse.Namespace) -> int:
    from dvpnd.config.hubedit import add_hub

    return _edit_hubs(args, lambda d: add_hub(d, args.name, args.public_key, args.endpoint, args.transit_network,
                                              first=args.first), f"added hub {args.name}")


def cmd_hub_remove(args: argparse.Namespace) -> int:
    from dvpnd.config.hubedit import remove_hub

    return _edit_hubs(args, lambda d: remove_hub(d, args.name), f"removed hub {args.name}")
