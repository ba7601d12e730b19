"""YAML loading that remembers where each value came from.

Errors about a configuration name the file, the line and the key path; PyYAML's plain
`safe_load` forgets lines and silently keeps the last of two duplicate keys, so the
document is composed into nodes and converted here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


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
    src = Source(path=path, data=None)
    if node is None:
        src.data = {}
        return src
    constructor = yaml.SafeLoader("")
    src.data = _convert(node, (), src, constructor)
    return src


def _convert(node: yaml.Node, kp: KeyPath, src: Source, c: yaml.SafeLoader) -> Any:
    src.lines.setdefault(kp, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = c.construct_object(knode, deep=True)
            if not isinstance(key, str):
                key = str(key)
            sub = kp + (key,)
            if key in out:
                raise YamlSyntaxError(
                    f"{src.path}:{knode.start_mark.line + 1}: {format_path(sub)}: "
                    f"duplicate key (first at line {src.lines[sub]})"
                )
            src.lines[sub] = knode.start_mark.line + 1
            out[key] = _convert(vnode, sub, src, c)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, kp + (i,), src, c) for i, item in enumerate(node.value)]
    return c.construct_object(node, deep=True)


def load_yaml_file(path: Path) -> Source:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlSyntaxError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise YamlSyntaxError(f"{path}: cannot read: {e}") from None
    return parse_yaml(text, path)
