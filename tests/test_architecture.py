"""The package's import graph: two layers, imports only downward, no cycle.

Every ``from . import x`` / ``from .x import y`` / ``import llmlatent.x`` in a module counts, wherever it
is (top level, inside a function, under ``if TYPE_CHECKING:``): a lazy or typing-only import still ties
the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llmlatent"

# core: pure and typed, no result folders, no plotting. pipeline: folders, figures, commands, notebook helpers.
LAYERS = {
    "core": {
        "errors", "atomic",  # the domain-error base; crash-safe file writes (used by the latent store)
        "adapter", "model", "capture", "tokens", "data", "tasks", "decode", "metrics", "lens",
        "latents", "latent_shards", "prefix", "steering", "steered", "patching", "checks",
    },
    "pipeline": {"runs", "experiment", "plots", "reproduce", "cli", "steering_sweep", "steering_eval", "steering_report",
                 "patch_experiment", "notebook", "__main__"},
    "package": {"__init__"},  # the version string only
}
KNOWN_UPWARD: set[tuple[str, str]] = set()  # none: every core module imports only core modules


def imports_of(path: Path) -> set[str]:
    """Return the llmlatent modules that ``path`` imports (any import statement anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmlatent"):
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("llmlatent.")]
        else:
            continue
        found.update(n for n in names if (PACKAGE / f"{n}.py").exists())
    return found - {path.stem}


def graph() -> dict[str, set[str]]:
    """Return module → imported llmlatent modules for every module of the package."""
    return {p.stem: imports_of(p) for p in sorted(PACKAGE.glob("*.py"))}


def layer_of(module: str) -> str:
    """Return the layer of a module (fails for a module missing from LAYERS)."""
    for layer, modules in LAYERS.items():
        if module in modules:
            return layer
    pytest.fail(f"module llmlatent/{module}.py is in no layer: add it to LAYERS in tests/test_architecture.py")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a list of modules (first = last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_every_module_has_a_layer():
    for module in graph():
        layer_of(module)


def test_core_never_imports_pipeline():
    upward = sorted((a, b) for a, deps in graph().items() for b in deps
                    if layer_of(a) == "core" and layer_of(b) == "pipeline" and (a, b) not in KNOWN_UPWARD)
    assert not upward, f"core modules import pipeline modules: {upward}"


def test_no_import_cycle():
    edges = {a: {b for b in deps if (a, b) not in KNOWN_UPWARD} for a, deps in graph().items()}
    assert find_cycle(edges) is None, f"import cycle: {' → '.join(find_cycle(edges))}"


def test_the_checker_sees_cycles_and_upward_edges(tmp_path):
    """The checks above can fail: a lazy import inside a function and a TYPE_CHECKING import are both seen."""
    module = tmp_path / "lens.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .latents import LatentStore\n"
                      "def f():\n    from . import plots\n    import llmlatent.runs\n")
    assert imports_of(module) == {"latents", "plots", "runs"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
