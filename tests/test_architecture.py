"""The package's import graph, from rules the folder itself states.

- **The library** is every module under ``llmlatent/`` outside ``llmlatent/experiments/`` and the faces; it
  never imports ``llmlatent.experiments``.
- **The faces** (``cli``, ``notebook``, ``__main__``) sit on top and may import anything.
- No import cycle, and every imported name has one owner: ``from llmlatent.x import name`` names the module
  that defines ``name`` (a package's ``__init__`` may gather its own submodules' names; no private name is
  imported across modules).

Every ``from . import x`` / ``from .x import y`` / ``import llmlatent.x`` in a module counts, wherever it
is (top level, inside a function, under ``if TYPE_CHECKING:``): a lazy or typing-only import still ties
the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llmlatent"
FACES = {"llmlatent.cli", "llmlatent.notebook", "llmlatent.__main__"}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """Return the dotted module name of a file under ``root`` (e.g. ``llmlatent.latents.store``)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """Return the absolute module an ``ImportFrom`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path = PACKAGE) -> set[tuple[str, str | None]]:
    """Return (module, name or None) for every llmlatent import in ``path`` (any statement anywhere in the file)."""
    module, found = module_name(path, root), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            source = resolve(node, module, path.name == "__init__.py")
            found.update((source, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update((a.name, None) for a in node.names)
    return {(m, n) for m, n in found if m == root.name or m.startswith(root.name + ".")}


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Return dotted name → file of every module of the package."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def edges(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Return module → the llmlatent modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    known = modules(root)
    out: dict[str, set[str]] = {}
    for name, path in known.items():
        deps = set()
        for source, imported in imports_of(path, root):
            deps.add(f"{source}.{imported}" if f"{source}.{imported}" in known else source)
        out[name] = {d for d in deps if d in known} - {name}
    return out


def is_library(module: str) -> bool:
    """Return whether ``module`` belongs to the library (not the experiments, not a face)."""
    return module not in FACES and not module.startswith("llmlatent.experiments")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a list of modules (first = last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def defined_names(path: Path) -> set[str]:
    """Return the names a module defines at top level (functions, classes, assignments), not those it imports."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def foreign_names(root: Path = PACKAGE) -> list[str]:
    """Return every ``from llmlatent.x import name`` whose ``name`` is neither defined in x nor a submodule of x.

    A package ``__init__`` is allowed to gather names from its own submodules (its public face), and a
    private name (leading underscore) may never be imported from another module.
    """
    known = modules(root)
    bad = []
    for name, path in known.items():
        for source, imported in imports_of(path, root):
            if imported is None or source not in known or f"{source}.{imported}" in known:
                continue
            source_path = known[source]
            if imported.startswith("_") and imported != "__version__":
                bad.append(f"{name} imports the private {source}.{imported}")
            elif imported not in defined_names(source_path):
                outside = source_path.name == "__init__.py" and not name.startswith(source + ".")
                if not (outside and imported in gathered(source_path, source)):
                    bad.append(f"{name} imports {imported} from {source}, which does not define it")
    return bad


def gathered(init: Path, package: str) -> set[str]:
    """Return the names a package ``__init__`` imports from its own submodules."""
    return {n for m, n in imports_of(init) if n and m.startswith(package + ".")}


def test_library_never_imports_experiments():
    upward = sorted(
        (a, b) for a, deps in edges().items() for b in deps if is_library(a) and not is_library(b) and b not in FACES
    )
    assert not upward, f"library modules import experiment modules: {upward}"
    faces = sorted((a, b) for a, deps in edges().items() for b in deps if a not in FACES and b in FACES)
    assert not faces, f"only the faces may import the faces: {faces}"


def test_no_import_cycle():
    cycle = find_cycle(edges())
    assert cycle is None, f"import cycle: {' → '.join(cycle)}"


def test_every_name_has_one_owner():
    bad = foreign_names()
    assert not bad, "\n".join(bad)


def test_the_checker_sees_cycles_upward_edges_and_reexports(tmp_path):
    """The checks above can fail: lazy and TYPE_CHECKING imports are seen, and so are re-exports and private names."""
    root = tmp_path / "llmlatent"
    (root / "experiments").mkdir(parents=True)
    for name in ("__init__.py", "experiments/__init__.py", "experiments/runs.py", "capture.py"):
        (root / name).write_text("")
    (root / "capture.py").write_text("def _batched():\n    pass\ndef forward():\n    pass\n")
    (root / "lens.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .capture import forward\n"
        "def f():\n    from .experiments import runs\n    from .capture import _batched\n"
    )
    (root / "decode.py").write_text("from llmlatent.lens import forward\n")
    graph = edges(root)
    assert graph["llmlatent.lens"] == {"llmlatent.capture", "llmlatent.experiments.runs"}
    assert not is_library("llmlatent.experiments.runs") and is_library("llmlatent.lens")
    assert sorted(foreign_names(root)) == [
        "llmlatent.decode imports forward from llmlatent.lens, which does not define it",
        "llmlatent.lens imports the private llmlatent.capture._batched",
    ]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_settings_class_finds_its_experiment_in_a_fresh_process():
    """runs.run works from the settings alone: it finds the experiment in the one list, whichever module came first."""
    import subprocess
    import sys

    code = (
        "from llmlatent.experiments.steering.plan import SteeringSettings\n"
        "from llmlatent.experiments import runs\n"
        "from llmlatent.experiments.patching import PatchSettings\n"
        "from llmlatent.experiments.sweep import SweepSettings\n"
        "print(*(runs.experiment_of(s()).kind for s in (SteeringSettings, PatchSettings, SweepSettings)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert out.stdout.split() == ["steering", "patching", "sweep"], out.stderr
