"""The package's shape holds: no import goes up a layer (as docs/architecture.md orders them),
no two modules import each other in a cycle, and the pure cores load without the web stack."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "driftd"
DOC = ROOT / "docs" / "architecture.md"


@cache
def layers() -> dict[str, int]:
    """Module prefix -> layer, from the table under "## Layers" in docs/architecture.md."""
    text = DOC.read_text(encoding="utf-8").split("## Layers", 1)[1].split("\n## ", 1)[0]
    out: dict[str, int] = {}
    for number, cells in re.findall(r"^\| (\d+) \| (.+) \|$", text, re.MULTILINE):
        for name in re.findall(r"`([\w.]+)`", cells):
            out[name] = int(number)
    assert out, "docs/architecture.md has no layer table"
    return out


def layer_of(module: str) -> int | None:
    prefixes = [p for p in layers() if module == p or module.startswith(p + ".")]
    return layers()[max(prefixes, key=len)] if prefixes else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@cache
def imports() -> dict[str, dict[str, int]]:
    """Every driftd module -> the driftd modules it imports (with a line), lazy ones included."""
    graph: dict[str, dict[str, int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                targets = [
                    f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base
                    for a in node.names
                ]
            for target in targets:
                if (target == "driftd" or target.startswith("driftd.")) and target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def test_every_module_has_a_layer() -> None:
    """A new top-level module or stage is placed in the table before it lands."""
    missing = sorted(m for m in imports() if layer_of(m) is None)
    assert not missing, f"not in docs/architecture.md's layer table: {missing}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{module}:{line} imports {target} (layer {layer_of(target)} > {layer_of(module)})"
        for module, edges in imports().items()
        for target, line in edges.items()
        if (layer_of(target) or 0) > (layer_of(module) or 0)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    graph = imports()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_walk_sees_the_imports_it_judges() -> None:
    """The graph is not vacuous: a known edge of each kind is in it."""
    graph = imports()
    assert "driftd.ingest.schema" in graph["driftd.monitor.monitor"]  # from ... import
    assert "driftd.service.logs" in graph["driftd.cli"]  # lazy, inside a function
    assert layer_of("driftd.retrain.gate") == layers()["driftd.retrain"]


def test_the_monitor_and_the_gate_load_without_pydantic_or_fastapi() -> None:
    code = (
        "import sys, driftd.monitor, driftd.retrain.gate, driftd.retrain.policy\n"
        "print(sorted(m for m in ('pydantic', 'fastapi', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
