"""The house's shape as tests: no import circle among dvpnd's modules (counting imports under
TYPE_CHECKING and inside functions: they are the real shape too), no private name imported
across modules, and the front doors never import the daemon."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dvpnd"


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


def imports(f: Path, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(module, names taken from it, line) for every import of a dvpnd module in `f`."""
    out = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dvpnd":
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            names = [a.name for a in node.names if f"{node.module}.{a.name}" not in known]
            out += [(m, [], node.lineno) for m in subs]
            if names or not subs:
                out.append((node.module, names, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for t, _, _ in imports(f, known) if t != m and not m.startswith(t + ".")} for m, f in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for t in sorted(g.get(n, ())):
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    return found


def test_no_import_circle() -> None:
    assert cycles(graph()) == []


def test_the_circle_check_sees_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_private_name_is_imported_across_modules() -> None:
    known = modules()
    bad = [f"{f.relative_to(PKG.parent)}:{line}: {name} from {m}"
           for f in known.values() for m, names, line in imports(f, known) for name in names
           if name.startswith("_") and not name.startswith("__")]
    assert bad == []


def test_the_front_doors_never_import_the_daemon() -> None:
    g = graph()
    for door in ("dvpnd.serve.http", "dvpnd.serve.metrics", "dvpnd.serve.control", "dvpnd.serve.api"):
        assert "dvpnd.daemon.core" not in g[door], door


def test_a_unit_test_that_starts_a_process_fails() -> None:
    import subprocess

    import pytest

    from tests.conftest import StartedAProcess

    with pytest.raises(StartedAProcess, match="a unit test may not, unless it is marked @pytest.mark.process"):
        subprocess.run(["true"], check=True)
