"""The package's import graph, from rules the folders themselves state.

- **The faces** are the files a user starts from: ``llmlatent/__init__.py`` (``import llmlatent as ll``),
  ``__main__.py``, ``cli.py`` and ``notebook.py``. Only a face imports a face (reading the
  version constant, ``from llmlatent import __version__``, is not an import of the face: see
  ``benchmarks/layout.py``).
- **The experiments** are the folder ``llmlatent/experiments/``; **the library** is ``llmlatent/`` minus the
  experiments and the faces, and it never imports the experiments.
- **Package faces**: a package's ``__init__.py`` gathers its own submodules' public names into ``__all__``.
- No import cycle, and every imported name has one owner: ``from llmlatent.x import name`` names the module
  that defines ``name`` (a package's ``__init__`` may gather its own submodules' names; no private name is
  imported across modules).
- **Notebooks** (``notebooks/*.ipynb``) import only from the faces: ``llmlatent``, ``llmlatent.notebook``,
  ``llmlatent.experiments`` and the package faces; a name must be in the face's ``__all__`` when it has one
  (or be a face itself: ``from llmlatent import lens``).

The reader (every ``import`` statement anywhere in a file counts, lazy and ``TYPE_CHECKING`` ones included)
lives in ``benchmarks/layout.py``, which prints the same graph's metrics.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "llmlatent"
NOTEBOOKS = REPO / "notebooks"


def _load_layout():
    """Return benchmarks/layout.py imported as a module (the AST import reader and the graph's metrics)."""
    spec = importlib.util.spec_from_file_location("layout", REPO / "benchmarks" / "layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


layout = _load_layout()
module_name, resolve, imports_of, modules, edges = (
    layout.module_name,
    layout.resolve,
    layout.imports_of,
    layout.modules,
    layout.edges,
)
find_cycle, defined_names, declared_all = layout.find_cycle, layout.defined_names, layout.declared_all

FACE_FILES = ("__init__.py", "__main__.py", "cli.py", "notebook.py")  # in llmlatent/
EXPERIMENTS = "experiments"  # the folder llmlatent/experiments/


def faces(root: Path = PACKAGE) -> set[str]:
    """Return the dotted names of the face files at the top of the package folder."""
    return {module_name(root / name, root) for name in FACE_FILES if (root / name).exists()}


def is_experiment(module: str, root: Path = PACKAGE) -> bool:
    """Return whether ``module`` lives in the experiments folder."""
    return module == f"{root.name}.{EXPERIMENTS}" or module.startswith(f"{root.name}.{EXPERIMENTS}.")


def is_library(module: str, root: Path = PACKAGE) -> bool:
    """Return whether ``module`` belongs to the library: the package folder minus the experiments and the faces."""
    return module not in faces(root) and not is_experiment(module, root)


def package_faces(root: Path = PACKAGE) -> dict[str, list[str]]:
    """Return package → its ``__all__`` for every package ``__init__`` below the top that declares one."""
    found = {}
    for path in sorted(root.rglob("__init__.py")):
        names = declared_all(path)
        if path.parent != root and names is not None:
            found[module_name(path, root)] = names
    return found


def notebook_faces(root: Path = PACKAGE) -> dict[str, list[str] | None]:
    """Return face → its public names (None: no ``__all__``, every public attribute) for the notebooks' imports."""
    known = modules(root)
    tops = (root.name, f"{root.name}.notebook", f"{root.name}.{EXPERIMENTS}")
    return {name: declared_all(known[name]) for name in tops if name in known} | package_faces(root)


def notebook_violations(notebooks: Path = NOTEBOOKS, root: Path = PACKAGE) -> list[str]:
    """Return one line per notebook import that does not come from a face (or names what the face does not list)."""
    known, allowed = modules(root), notebook_faces(root)
    bad = []
    for notebook, found in layout.notebook_imports(notebooks, root).items():
        for source, name in sorted(found, key=str):
            if layout.target(source, name, known) in allowed:
                continue  # a face itself: import llmlatent, from llmlatent import lens
            public = allowed.get(source, [])
            if source not in allowed or (public is not None and name not in public) or name.startswith("_"):
                what = source if name is None else f"{name} from {source}"
                bad.append(f"{notebook} imports {what}, which is not a face's public name")
    return bad


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
    top = faces()
    upward = sorted((a, b) for a, deps in edges().items() for b in deps if is_library(a) and is_experiment(b))
    assert not upward, f"library modules import experiment modules: {upward}"
    into_faces = sorted((a, b) for a, deps in edges().items() for b in deps if a not in top and b in top)
    assert not into_faces, f"only the faces may import the faces: {into_faces}"


def test_every_package_has_a_face():
    """Every package ``__init__`` declares ``__all__``, and each name in it is one its submodules define."""
    known = modules()
    for path in sorted(PACKAGE.rglob("__init__.py")):
        package = module_name(path)
        names = declared_all(path)
        if path.parent == PACKAGE or package == f"{PACKAGE.name}.{EXPERIMENTS}":
            continue  # the top face is checked below; the experiments' list is its own face
        assert names is not None, f"{package} has no __all__"
        unknown = [n for n in names if n not in gathered(path, package) and f"{package}.{n}" not in known]
        assert not unknown, f"{package}.__all__ lists names it does not gather from its submodules: {unknown}"


def test_the_top_face_is_lazy_and_complete():
    """``import llmlatent`` loads no torch; each public name is the object its home module defines."""
    import subprocess
    import sys

    import llmlatent

    names = declared_all(PACKAGE / "__init__.py")
    assert names == llmlatent.__all__ and set(names) == {"__version__", *llmlatent._HOMES}
    typed = {n for m, n in imports_of(PACKAGE / "__init__.py") if n}
    typed = {n if n != "of" else "lens_of" for n in typed}  # ``from llmlatent.lens import of as lens_of``
    assert typed == set(llmlatent._HOMES), "the TYPE_CHECKING imports and _HOMES list other names"
    code = "import sys, llmlatent; print('torch' in sys.modules, len(llmlatent.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["False", str(len(names))], out.stderr
    for name, (home, attribute) in llmlatent._HOMES.items():
        module = importlib.import_module(home)
        assert getattr(llmlatent, name) is (module if attribute is None else getattr(module, attribute)), name
    import pytest

    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        llmlatent.nothing  # noqa: B018


def test_notebooks_import_only_from_the_faces():
    bad = notebook_violations()
    assert not bad, "\n".join(bad)


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
    assert layout.cycles({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [["a", "b"]]
    assert layout.longest_path({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == ["a", "b", "c"]
    (root / "__init__.py").write_text("__all__ = ['steering']\n")
    (root / "steering").mkdir()
    (root / "steering" / "hook.py").write_text("class SteeringVector:\n    pass\n")
    (root / "steering" / "__init__.py").write_text(
        "from llmlatent.steering.hook import SteeringVector\n__all__ = ['SteeringVector']\n"
    )
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    cells = [
        {"cell_type": "code", "source": ["%matplotlib inline\n", "from llmlatent import capture, steering\n"]},
        {"cell_type": "code", "source": ["from llmlatent.steering import SteeringVector, hook\n", "import llmlatent"]},
        {"cell_type": "code", "source": ["from llmlatent.experiments import runs\n"]},
        {"cell_type": "markdown", "source": ["from llmlatent.capture import forward\n"]},
    ]
    (notebooks / "01.ipynb").write_text(json.dumps({"cells": cells}))
    assert notebook_violations(notebooks, root) == [
        "01.ipynb imports capture from llmlatent, which is not a face's public name",
        "01.ipynb imports hook from llmlatent.steering, which is not a face's public name",
    ]


def test_every_settings_class_finds_its_experiment_in_a_fresh_process():
    """runs.run works from the settings alone: a settings class defined apart from its experiment imports it."""
    import subprocess
    import sys

    code = (
        "from llmlatent.experiments import runs\n"
        "from llmlatent.experiments.steering.plan import SteeringSettings\n"
        "from llmlatent.experiments.patching import PatchSettings\n"
        "from llmlatent.experiments.sweep import SweepSettings\n"
        "print(*(runs.experiment_of(s()).kind for s in (SteeringSettings, PatchSettings, SweepSettings)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert out.stdout.split() == ["steering", "patching", "sweep"], out.stderr
