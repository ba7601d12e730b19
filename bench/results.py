"""Writing RESULTS.md / RESULTS.json: a full run writes the whole table; a run with --only
replaces its own rows in place and keeps every other row, so that re-measuring one section never
loses the others' figures (the written analysis below the table is kept either way)."""

from __future__ import annotations

import json
from typing import Any

from bench.stats import Figure

TABLE_HEAD = ("| figure | dvpnd | anchor (same run) | ratio | goal | met | note |", "|---|---|---|---|---|---|---|")


def row_name(line: str) -> str | None:
    """The figure's name of a table row, None for anything else."""
    if not line.startswith("| ") or line in TABLE_HEAD:
        return None
    return line[2:].split(" | ", 1)[0]


def merge_rows(old: list[str], new: list[Figure]) -> list[str]:
    """The old table's rows with each re-measured figure's row in its place; figures the old
    table did not have follow the last row replaced (or end the table)."""
    fresh = {f.name: f.row() for f in new}
    out: list[str] = []
    last = -1
    for line in old:
        name = row_name(line)
        if name is not None and name in fresh:
            out.append(fresh.pop(name))
            last = len(out)
        elif name is not None:
            out.append(line)
    added = [fresh[f.name] for f in new if f.name in fresh]
    at = last if last >= 0 else len(out)
    return out[:at] + added + out[at:]


def split_results(text: str) -> tuple[list[str], list[str], str]:
    """A RESULTS.md: the lines above the table, the table's rows, and the analysis from `## ` on."""
    analysis = text[text.index("\n## "):] if "\n## " in text else ""
    body = text[: len(text) - len(analysis)].splitlines()
    head = [ln for ln in body if not ln.startswith("|")]
    rows = [ln for ln in body if row_name(ln) is not None]
    while head and head[-1] == "":
        head.pop()
    return head, rows, analysis


def merge_json(old: list[dict[str, Any]], new: list[Figure]) -> list[dict[str, Any]]:
    fresh = {f.name: f.to_json() for f in new}
    out = [fresh.pop(d["name"], d) for d in old]
    return out + [fresh[f.name] for f in new if f.name in fresh]


def read_json(text: str) -> list[dict[str, Any]]:
    try:
        got = json.loads(text)
    except ValueError:
        return []
    return [d for d in got if isinstance(d, dict) and "name" in d] if isinstance(got, list) else []
