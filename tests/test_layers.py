"""The import contract: src/modelswarms in the layers of docs/ARCHITECTURE.md, no cycle, no
upward edge, no private name imported from another module.

The graph is read from the source (every `import` / `from ... import`, at module level or
inside a function, so a lazy import cannot hide an edge); nothing is imported or run.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "modelswarms"

# Bottom to top. A module may import its own layer's package and anything below; packages that
# share a layer do not import each other. A module belongs to its longest matching prefix.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("io",),
    ("stats", "folders", "models", "trackers"),
    ("config",),
    ("space",),
    ("pool",),
    ("merge",),
    ("evaluation.data",),
    ("evaluation.engine",),
    ("evaluation.objectives",),
    ("evaluation",),  # the evaluator seam: evaluator.py, ray_pool.py
    ("mixture", "hetero", "pool.kinds"),  # the weight pools build their evaluator
    ("search",),  # search/hswarm.py searches hetero's systems
    ("experts", "runs"),
    ("api", "testing", "demo_data"),
    ("cli", "docs"),  # docs.py walks the registries api.py fills
    ("__main__", ""),  # "": the package's __init__, the Python API
]

# Edges known to break the layers, each with who removes it. An entry that no longer exists
# fails the test, so the list only shrinks.
KNOWN: dict[tuple[str, str], str] = {}


def _module_of(path: Path, src: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def read_graph(src: Path = SRC) -> tuple[dict[str, set[str]], list[str]]:
    """module -> the modules it imports (names relative to the package, "" for its
    __init__), and every `from x import _private` across modules as 'where: what'."""
    modules = {_module_of(p, src): p for p in sorted((src / ROOT).rglob("*.py"))}
    names = {m for m, _ in modules}
    graph: dict[str, set[str]] = defaultdict(set)
    private: list[str] = []
    for (mod, is_pkg), path in modules.items():
        graph[_short(mod)]  # every module, those importing nothing of ours included
        package = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package[: len(package) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in names else base)
                    if alias.name.startswith("_") and full not in names and \
                            base.startswith(ROOT) and base != mod:
                        private.append(f"{mod}:{node.lineno}: {base}.{alias.name}")
            for t in targets:
                if (t == ROOT or t.startswith(ROOT + ".")) and t != mod:
                    graph[_short(mod)].add(_short(t))
    return graph, private


def _short(module: str) -> str:
    return module.removeprefix(ROOT).removeprefix(".")


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the prefix that placed it)."""
    best: tuple[int, str] | None = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            inside = module == p or (p != "" and module.startswith(p + "."))
            if inside and (best is None or len(p) > len(best[1])):
                best = (i, p)
    if best is None:
        raise AssertionError(f"{ROOT}.{module} is in no layer: add it to LAYERS "
                             "(and docs/ARCHITECTURE.md)")
    return best


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in graph.items():
        la, pa = layer_of(a)
        for b in targets:
            lb, pb = layer_of(b)
            if lb > la or (lb == la and pa != pb):
                bad.append(f"{a} -> {b} ({pa or ROOT!r}, layer {la}, imports {pb or ROOT!r}, "
                           f"layer {lb})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def without_known(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {a: {b for b in bs if (a, b) not in KNOWN} for a, bs in graph.items()}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return read_graph()[0]


def test_no_upward_edge(graph):
    bad = upward_edges(without_known(graph))
    assert not bad, "imports against the layers of docs/ARCHITECTURE.md:\n" + "\n".join(bad)


def test_no_cycle(graph):
    found = cycles(without_known(graph))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_known_exceptions_still_exist(graph):
    stale = [f"{a} -> {b}" for a, b in KNOWN if b not in graph.get(a, ())]
    assert not stale, "gone, so remove them from KNOWN:\n" + "\n".join(stale)


def test_no_private_name_crosses_modules():
    private = read_graph()[1]
    assert not private, "private names imported from another module:\n" + "\n".join(private)


def test_every_module_has_a_layer(graph):
    assert "evaluation.engine.batching" in graph and "errors" in graph
    for module in graph:
        layer_of(module)


def test_the_contract_catches_an_upward_and_a_circular_import(tmp_path):
    """The checks on a copy of the package with one import added where it must not be:
    config (layer 3) importing runs.runner, which imports config."""
    shutil.copytree(SRC / ROOT, tmp_path / ROOT)
    config = tmp_path / ROOT / "config.py"
    config.write_text(config.read_text() + "\n\ndef _late():\n    from .runs import runner\n")
    bad = without_known(read_graph(tmp_path)[0])
    assert any(e.startswith("config -> runs.runner ") for e in upward_edges(bad))
    assert any("config" in c and "runs.runner" in c for c in cycles(bad))


def test_importing_the_package_and_cli_leaves_transformers_unloaded():
    """Why generation imports decode inside `generate`: transformers (and peft) take seconds
    to import, and `import modelswarms` or `modelswarms --help` need neither."""
    code = ("import sys, modelswarms, modelswarms.cli; "
            "print(sorted(m for m in ('transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
