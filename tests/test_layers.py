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
