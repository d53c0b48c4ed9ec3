"""Layout metrics of the package: modules per folder, import edges, the graph's depth, cycles, notebook imports.

Run ``python benchmarks/layout.py`` (this checkout) or ``python benchmarks/layout.py --root OTHER_CHECKOUT``
(any tree with ``llmlatent/`` and ``notebooks/``); ``--json`` prints the same numbers as JSON.

This module also owns the AST import reader that ``tests/test_architecture.py`` states its rules with: every
``from . import x`` / ``from .x import y`` / ``import llmlatent.x`` in a module counts, wherever it is (top level,
inside a function, under ``if TYPE_CHECKING:``), since a lazy or typing-only import still ties two modules.
One import is not an edge: ``from llmlatent import __version__`` reads the version constant that
``llmlatent/__init__.py`` defines before anything else, not the public face's names.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "llmlatent"


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


def imports_in(tree: ast.AST, module: str, is_package: bool, package: str) -> set[tuple[str, str | None]]:
    """Return (module, name or None) for every import of ``package`` in a parsed tree (any statement anywhere)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = resolve(node, module, is_package)
            found.update((source, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update((a.name, None) for a in node.names)
    return {(m, n) for m, n in found if m == package or m.startswith(package + ".")}


def imports_of(path: Path, root: Path = PACKAGE) -> set[tuple[str, str | None]]:
    """Return (module, name or None) for every llmlatent import in ``path`` (any statement anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return imports_in(tree, module_name(path, root), path.name == "__init__.py", root.name)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Return dotted name → file of every module of the package."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def target(source: str, imported: str | None, known: dict[str, Path]) -> str:
    """Return the module an import names: ``from pkg import sub`` is ``pkg.sub`` when that is a module."""
    return f"{source}.{imported}" if f"{source}.{imported}" in known else source


def edges(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Return module → the llmlatent modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    known = modules(root)
    out: dict[str, set[str]] = {}
    for name, path in known.items():
        found = imports_of(path, root) - {(root.name, "__version__")}
        deps = {target(source, imported, known) for source, imported in found}
        out[name] = {d for d in deps if d in known} - {name}
    return out


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


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (each a set of mutually importing ones)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for start in sorted(graph):
        if start not in index:
            visit(start)
    return sorted(found)


def longest_path(graph: dict[str, set[str]]) -> list[str]:
    """Return the longest import chain (modules, importer first); an edge back into the current chain is skipped."""
    best: dict[str, list[str]] = {}

    def visit(node: str, chain: set[str]) -> list[str]:
        if node in best:
            return best[node]
        chain.add(node)
        tails = [visit(nxt, chain) for nxt in sorted(graph.get(node, ())) if nxt not in chain]
        chain.discard(node)
        path = [node, *max(tails, key=len, default=[])]
        if not chain:  # memoise only whole-graph answers, so a skipped back edge never leaks into another start
            best[node] = path
        return path

    return max((visit(start, set()) for start in sorted(graph)), key=len, default=[])


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


def declared_all(path: Path) -> list[str] | None:
    """Return a module's literal ``__all__`` (a list or tuple of strings at top level), or None without one."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
                return [ast.literal_eval(e) for e in node.value.elts]
    return None


def notebook_imports(notebooks: Path, root: Path = PACKAGE) -> dict[str, set[tuple[str, str | None]]]:
    """Return notebook file name → (module, name or None) of every llmlatent import in its code cells."""
    out = {}
    for path in sorted(notebooks.glob("*.ipynb")):
        found: set[tuple[str, str | None]] = set()
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
            found |= imports_in(ast.parse("\n".join(lines)), "__notebook__", False, root.name)
        out[path.name] = found
    return out


def notebook_modules(notebooks: Path, root: Path = PACKAGE) -> dict[str, set[str]]:
    """Return notebook file name → the distinct llmlatent modules it imports (``from pkg import sub``: ``pkg.sub``)."""
    known = modules(root)
    return {
        name: {target(source, imported, known) for source, imported in found}
        for name, found in notebook_imports(notebooks, root).items()
    }


def metrics(repo: Path) -> dict:
    """Return the layout metrics of the checkout at ``repo`` (its ``llmlatent/`` and ``notebooks/``)."""
    root = repo / "llmlatent"
    known = modules(root)
    graph = edges(root)
    per_folder = Counter(str(path.parent.relative_to(repo)) for path in known.values())
    chain = longest_path(graph)
    by_notebook = notebook_modules(repo / "notebooks", root)
    imported = set().union(*by_notebook.values()) if by_notebook else set()
    statements = notebook_imports(repo / "notebooks", root).values()
    sources = {source for found in statements for source, _ in found}
    return {
        "root": str(repo),
        "modules_per_folder": dict(sorted(per_folder.items())),
        "modules": len(known),
        "import_edges": sum(len(deps) for deps in graph.values()),
        "depth": max(0, len(chain) - 1),
        "longest_chain": chain,
        "cycles": cycles(graph),
        "notebook_modules": len(imported),
        "notebook_modules_list": sorted(imported),
        "notebook_import_sources": len(sources),
        "notebook_import_sources_list": sorted(sources),
        "notebook_modules_per_notebook": {name: len(found) for name, found in by_notebook.items()},
    }


def table(result: dict) -> str:
    """Return the metrics as a plain-text table."""
    rows = [(folder, str(n)) for folder, n in result["modules_per_folder"].items()]
    rows += [
        ("modules (total)", str(result["modules"])),
        ("import edges between llmlatent modules", str(result["import_edges"])),
        ("depth (edges on the longest import chain)", str(result["depth"])),
        ("cycles (groups of mutually importing modules)", str(len(result["cycles"]))),
        ("distinct llmlatent modules the notebooks import", str(result["notebook_modules"])),
        ("distinct X in the notebooks' `from X import` lines", str(result["notebook_import_sources"])),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"layout of {result['root']}", f"{'folder / metric':<{width}}  value", "-" * (width + 7)]
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    lines.append("longest chain: " + " → ".join(result["longest_chain"]))
    lines += ["cycle: " + ", ".join(group) for group in result["cycles"]]
    lines.append("notebooks import: " + ", ".join(result["notebook_modules_list"]))
    lines.append("notebooks import from: " + ", ".join(result["notebook_import_sources_list"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the layout metrics of a checkout (table or ``--json``); return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="checkout to measure (holds llmlatent/, notebooks/)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if not (args.root / "llmlatent").is_dir():
        parser.error(f"--root {args.root} has no llmlatent/ folder")
    result = metrics(args.root.resolve())
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
