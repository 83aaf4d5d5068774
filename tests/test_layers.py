"""The package's shape: no import cycles between modules (function-local imports included),
and the layers contract of ``pyproject.toml`` (``make lint`` runs import-linter on it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("pufferfiber", exclude_type_checking_imports=True)


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle() -> None:
    planted = grimp.build_graph("pufferfiber", exclude_type_checking_imports=True)
    planted.add_import(importer="pufferfiber.core.policy", imported="pufferfiber.core.divergence")
    found = cycles(planted)
    assert any({"pufferfiber.core.divergence", "pufferfiber.core.policy"} <= set(c) for c in found)


def test_core_imports_no_other_layer(graph: grimp.ImportGraph) -> None:
    """The layers contract, read from pyproject.toml, holds (the same check as `make lint`)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    layers = contract["layers"]
    assert layers[-1] == "pufferfiber.core"
    for i, upper in enumerate(layers):
        for lower in layers[i + 1 :]:
            chains = graph.find_shortest_chains(importer=lower, imported=upper)
            assert not chains, f"{lower} imports {upper}: {sorted(chains)[0]}"


# Third-party packages whose import cost is worth deferring (``--help`` must stay fast).
HEAVY = ("torch", "scipy", "numpy", "pufferlib", "gymnasium", "ray", "matplotlib", "rich")


def _heavy_loaded(modules: list[str]) -> dict[str, frozenset[str]]:
    """Which of :data:`HEAVY` importing each module loads, each in a fresh interpreter."""
    import json
    import subprocess
    import sys

    code = (
        "import importlib, json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "m = sys.argv[1]\n"
        "importlib.import_module(m)\n"
        "print(json.dumps([h for h in heavy if h in sys.modules]))\n"
    )
    out = {}
    for m in modules:
        proc = subprocess.run(
            [sys.executable, "-c", code, m], capture_output=True, text=True, cwd=REPO, check=True
        )
        out[m] = frozenset(json.loads(proc.stdout))
    return out


def _local_imports() -> list[tuple[str, str, int]]:
    """``(importing module, imported module, line)`` of every function-local pufferfiber import."""
    import ast

    found = []
    for path in sorted((REPO / "pufferfiber").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "pufferfiber"
                ):
                    for alias in node.names:
                        sub = f"{node.module}.{alias.name}"
                        target = (
                            sub
                            if (REPO / (sub.replace(".", "/") + ".py")).exists()
                            else node.module
                        )
                        found.append((module, str(target), node.lineno))
    return found


@pytest.mark.slow
def test_function_local_imports_only_defer_cost() -> None:
    """A pufferfiber import inside a function must defer some heavy package that its module does
    not load already; otherwise it belongs at the top of the module."""
    local = _local_imports()
    heavy = _heavy_loaded(sorted({m for pair in local for m in pair[:2]}))
    needless = [
        f"{m}:{line} imports {target} inside a function but defers nothing"
        for m, target, line in local
        if heavy[target] <= heavy[m]
    ]
    assert needless == []
