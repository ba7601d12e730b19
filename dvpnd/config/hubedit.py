"""A spoke's list of hubs, edited (`dvpnctl hub add/remove`): pure functions on the parsed YAML.

`hub:` (one hub) becomes `hubs:` (a list, preferred first) when a second hub is added, and a
list left with one hub stays a list. The caller validates the result with the loader before
writing it, so an edit that makes a bad config changes nothing."""

from __future__ import annotations

import copy
from typing import Any

from dvpnd.errors import DvpnError


class HubEditError(DvpnError):
    """The edit contradicts the config (exit 2)."""


def _hubs_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if isinstance(doc.get("hubs"), list):
        return [dict(h) for h in doc["hubs"] if isinstance(h, dict)]
    if isinstance(doc.get("hub"), dict):
        first = dict(doc["hub"])
        first.setdefault("name", "hub")
        return [first]
    return []


def add_hub(doc: dict[str, Any], name: str, public_key: str, endpoint: str, transit_network: str | None,
            first: bool = False) -> dict[str, Any]:
    """`doc` with the hub added (last, or first with `first`)."""
    if doc.get("role") != "spoke":
        raise HubEditError("'hub add' edits a spoke's config (this one has role: "
                           f"{doc.get('role')}); a hub's own transit network is overlay.transit_network")
    hubs = _hubs_of(doc)
    for h in hubs:
        if h.get("name") == name:
            raise HubEditError(f"a hub named {name!r} is listed already")
        if h.get("public_key") == public_key:
            raise HubEditError(f"that public key is hub {h.get('name')!r}'s")
    entry: dict[str, Any] = {"name": name, "public_key": public_key, "endpoint": endpoint}
    if transit_network:
        entry["transit_network"] = transit_network
    hubs = [entry, *hubs] if first else [*hubs, entry]
    out = copy.deepcopy(doc)
    out.pop("hub", None)
    out["hubs"] = hubs
    return out


def remove_hub(doc: dict[str, Any], name: str) -> dict[str, Any]:
    hubs = _hubs_of(doc)
    if name not in [h.get("name") for h in hubs]:
        raise HubEditError(f"no hub named {name!r} (hubs: {', '.join(str(h.get('name')) for h in hubs)})")
    left = [h for h in hubs if h.get("name") != name]
    if not left:
        raise HubEditError(f"{name!r} is the only hub: a spoke needs one")
    out = copy.deepcopy(doc)
    out.pop("hub", None)
    out["hubs"] = left
    if len(left) == 1:
        out.pop("probe", None)  # probing is for a spoke with more than one hub
    return out
