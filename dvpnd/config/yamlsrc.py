"""YAML loading that remembers where each value came from.

Errors about a configuration name the file, the line and the key path; PyYAML's plain
`safe_load` forgets lines and silently keeps the last of two duplicate keys, so the
document is composed into nodes and converted here.

A configuration is plain data, so this reads only what plain data needs, whatever the file
holds: a regular file of at most MAX_BYTES (no FIFO, device or directory), no explicit tags
(`!!int 'zz'`, `!custom`), no merge keys (`<<`), at most MAX_NODES values once aliases are
expanded (an alias bomb) and MAX_DEPTH levels (a recursive alias, deep nesting). Dates stay
the text they were written as. Every problem is a YamlSyntaxError naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dvpnd.util.fsutil import UnsafeFile, read_regular

KeyPath = tuple[str | int, ...]
MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 32
_PLAIN_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_INT = "tag:yaml.org,2002:int"


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


@dataclass
class Source:
    """A parsed YAML document with the line of every key path."""

    path: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def where(self, key_path: KeyPath) -> str:
        """`file:line: key.path` for an error message, using the nearest known line."""
        probe = key_path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        loc = f"{self.path}:{line}" if line else f"{self.path}"
        return f"{loc}: {format_path(key_path)}"


class YamlSyntaxError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def parse_yaml(text: str, path: Path) -> Source:
    """Parse one YAML document; raise YamlSyntaxError naming the file and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = e.problem or e.context or "syntax error"
        raise YamlSyntaxError(f"{path}{line}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise YamlSyntaxError(f"{path}: YAML syntax error: {e}") from None
    except RecursionError:
        raise YamlSyntaxError(f"{path}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    src = Source(path=path, data=None)
    if node is None:
        src.data = {}
        return src
    converter = _Converter(src)
    try:
        src.data = converter.convert(node, (), 0)
    finally:
        converter.close()
    return src


class _Converter:
    def __init__(self, src: Source):
        self.src = src
        self.c = yaml.SafeLoader("")
        self.nodes = 0

    def close(self) -> None:
        """Break the loader's cycles (its parser's state is a bound method of its own, and its
        constructor keeps every node it built from): otherwise the whole document's nodes and
        marks are left to the cyclic collector (90,000 objects for a hub with 5,000 peers, whose
        full collection then holds the process for 200 ms)."""
        self.c.constructed_objects.clear()
        self.c.recursive_objects.clear()
        self.c.dispose()

    def fail(self, node: yaml.Node, kp: KeyPath, problem: str) -> YamlSyntaxError:
        return YamlSyntaxError(f"{self.src.path}:{node.start_mark.line + 1}: {format_path(kp)}: {problem}")

    def convert(self, node: yaml.Node, kp: KeyPath, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(node, kp, f"more than {MAX_NODES} values (aliases expanding without end?)")
        if depth > MAX_DEPTH:
            raise self.fail(node, kp, f"nested too deeply (at most {MAX_DEPTH} levels; a recursive alias?)")
        self.src.lines.setdefault(kp, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP:
                raise self.fail(node, kp, f"tag {node.tag!r} is not allowed here: write plain values")
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                if knode.tag == _MERGE:
                    raise self.fail(knode, kp, "merge keys (<<) are not supported: write the keys out")
                if not isinstance(knode, yaml.ScalarNode):
                    raise self.fail(knode, kp, "a key must be a plain value, not a list or mapping")
                key = str(self.scalar(knode, kp))
                sub = kp + (key,)
                if key in out:
                    raise YamlSyntaxError(
                        f"{self.src.path}:{knode.start_mark.line + 1}: {format_path(sub)}: "
                        f"duplicate key (first at line {self.src.lines[sub]})"
                    )
                self.src.lines[sub] = knode.start_mark.line + 1
                out[key] = self.convert(vnode, sub, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                raise self.fail(node, kp, f"tag {node.tag!r} is not allowed here: write plain values")
            return [self.convert(item, kp + (i,), depth + 1) for i, item in enumerate(node.value)]
        return self.scalar(node, kp)

    def scalar(self, node: yaml.Node, kp: KeyPath) -> Any:
        style = getattr(node, "style", None)
        implicit = (style is None, style is not None)
        if node.tag not in _PLAIN_TAGS or node.tag != self.c.resolve(yaml.ScalarNode, node.value, implicit):
            raise self.fail(node, kp, f"tag {node.tag!r} is not allowed here: write plain values")
        if node.tag == _TIMESTAMP:
            return node.value  # a date is nothing a config needs: keep the text for the error
        if node.tag == _INT and len(node.value) > 24:
            raise self.fail(node, kp, f"{node.value[:24]}...: integer out of range")
        try:
            value = self.c.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as e:
            problem = getattr(e, "problem", None) or str(e)
            raise self.fail(node, kp, f"cannot read {node.value[:40]!r}: {problem}") from None
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1 << 63:
            raise self.fail(node, kp, f"{node.value}: integer out of range")
        return value


def read_text(path: Path, limit: int = MAX_BYTES) -> str:
    """The text of a regular file (links followed) of at most `limit` bytes, else YamlSyntaxError."""
    try:
        text = read_regular(path, limit, follow_links=True)
    except UnsafeFile as e:
        raise YamlSyntaxError(f"{e}; a configuration is a plain file of a few lines") from None
    if text is None:
        raise YamlSyntaxError(f"{path}: file not found")
    return text


def load_yaml_file(path: Path) -> Source:
    return parse_yaml(read_text(path), path)
