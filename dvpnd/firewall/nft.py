"""The only code that talks to libnftables: applying the rendered batch, reading the table back,
and noticing drift (the table deleted or edited by hand) so the next pass applies again."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from dvpnd.config.model import Config
from dvpnd.errors import DvpnError
from dvpnd.firewall.ruleset import (
    FAMILY,
    TABLE,
    Json,
    count_rules,
    normalize_listing,
    render_removal,
    render_ruleset,
    table_ref,
)

log = logging.getLogger("dvpnd.firewall")


class FirewallError(DvpnError):
    """libnftables refused the batch; the previous table stays in force."""

    def __init__(self, message: str, batch: Json | None = None):
        super().__init__(message)
        self.batch = batch


@dataclass
class FirewallState:
    applied: bool = False
    live: Any = None  # normalized listing of the table right after our last apply
    rendered: str | None = None  # the batch that produced `live`, as canonical JSON
    error: str | None = None
    applies: int = 0
    rule_count: int = 0


# --- the only code that talks to libnftables ---------------------------------------------------

def _nft() -> Any:
    import nftables

    nft = nftables.Nftables()
    nft.set_json_output(True)
    nft.set_handle_output(False)
    return nft


def apply_batch(batch: Json) -> None:
    nft = _nft()
    rc, _out, err = nft.json_cmd(batch)
    if rc != 0:
        raise FirewallError(f"nftables rejected the batch: {err.strip() or f'rc={rc}'}", batch)


def read_table() -> Json | None:
    """The live `inet dvpn` table as libnftables JSON, or None if it does not exist."""
    nft = _nft()
    rc, out, _err = nft.json_cmd({"nftables": [{"list": {"table": table_ref()}}]})
    if rc != 0 or not out:
        return None
    data: Json = json.loads(out) if isinstance(out, str) else out
    return data


def list_table_text() -> str | None:
    import nftables

    nft = nftables.Nftables()
    rc, out, _err = nft.cmd(f"list table {FAMILY} {TABLE}")
    return out if rc == 0 else None


def remove_table() -> None:
    apply_batch(render_removal())


def reconcile_firewall(config: Config, state: FirewallState, force: bool = False) -> bool:
    """Apply the policy if it is missing, drifted or changed (or `force`); True if it was applied.

    On a rejected batch the previous table stays (the batch is one transaction), the error
    is recorded in `state.error` for the status page, and FirewallError is not raised:
    the tunnel keeps working under the last good policy.
    """
    if not config.firewall.enabled:
        if state.applied:
            remove_table()
            state.applied, state.live = False, None
            log.info("firewall disabled: removed table %s %s", FAMILY, TABLE)
        return False
    batch = render_ruleset(config)
    key = json.dumps(batch, sort_keys=True)
    live = read_table()
    current = normalize_listing(live) if live is not None else None
    if not force and state.applied and current is not None and current == state.live and key == state.rendered:
        return False
    if force:
        reason = "requested"
    elif live is None:
        reason = "missing"
    elif state.applied and current != state.live:
        reason = "changed by hand"
    else:
        reason = "config changed" if state.applied else "initial"
    try:
        apply_batch(batch)
    except FirewallError as e:
        state.error = str(e)
        log.error("firewall not applied, keeping the previous table: %s", e)
        log.debug("rejected batch: %s", json.dumps(e.batch))
        return False
    after = read_table()
    state.applied, state.live, state.error = True, normalize_listing(after or {}), None
    state.applies += 1
    state.rule_count = count_rules(batch)
    state.rendered = key
    log.info("firewall applied (%s): table %s %s, %d rules", reason, FAMILY, TABLE, state.rule_count)
    return True
