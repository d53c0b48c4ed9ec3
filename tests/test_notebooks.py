"""The numbered notebooks: committed without outputs, a `parameters` cell first, and each runs top to bottom.

Execution uses papermill with small parameters (outputs under pytest's tmp_path, never the repo) and
cwd = notebooks/, like a user running them. Run only these with ``pytest -m notebooks``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# Small parameters per notebook; "{tmp}" is replaced by the test's tmp_path.
SMALL: dict[str, dict] = {
    "01_logit_lens_playground.ipynb": {"k": 3, "positions": 4},
    "02_translation.ipynb": {"n": 6, "out_dir": "{tmp}/02"},
    "03_repetition.ipynb": {"n": 6, "out_dir": "{tmp}/03", "compare_filters": True},  # the variants cell, cheaply
    "04_cloze.ipynb": {"n": 6, "out_dir": "{tmp}/04"},
    "05_latents.ipynb": {"n": 6, "cache_dir": "{tmp}/05"},
    "06_steering_ru_zh.ipynb": {"n_concepts": 6, "layers": [6], "alphas": [4.0], "n_random": 1, "flip": False, "n_examples": 2,
                                "max_new_tokens": 3, "out_dir": "{tmp}/06", "latents_dir": "{tmp}/06_latents"},
    "07_paper_figures.ipynb": {"results_dir": "{tmp}/results", "figures_dir": "{tmp}/figures", "n_if_missing": 3,
                               "langs": ["en", "zh"]},
    "08_patching.ipynb": {"n": 3, "layers": [4, 12, 17], "mean_over": ["de", "en"], "out_dir": "{tmp}/08"},
}


def notebook_paths() -> list[Path]:
    """Return the committed numbered notebooks, sorted."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_every_notebook_has_small_parameters():
    names = {p.name for p in notebook_paths()}
    assert names, "no notebooks found"
    assert names <= set(SMALL), f"add small CI parameters for {sorted(names - set(SMALL))} to SMALL"


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown", "a markdown cell on top explains the notebook"
    assert code and code[0].metadata.get("tags") == ["parameters"], "the first code cell must be tagged 'parameters'"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs before committing"
    text = "\n".join(c.source for c in nb.cells)
    assert "model = None" in code[0].source, "the default must be the embedded model"
    from papermill.translators import PythonTranslator

    declared = {p.name for p in PythonTranslator.inspect(code[0])}  # what `papermill --help-notebook` lists
    assignments = [line for line in code[0].source.splitlines() if re.match(r"^\w+\s*=", line)]
    assert len(declared) == len(assignments), "papermill cannot parse a parameter line (no '=' in comments)"
    assert set(SMALL.get(path.name, {})) <= declared, "the CI parameters must exist in the parameters cell"
    assert not re.search(r"hf_[A-Za-z0-9]{20,}", text), "no access tokens in notebooks"
    assert not re.search(r"[\"'](/(home|work|tmp|root)/|[A-Z]:\\\\)", text), "no absolute paths in notebooks"


def _this_python(spec_argv0: str) -> bool:
    # jupyter_client launches sys.executable for a bare "python"/"python3"/"pythonX.Y" argv[0]
    bare = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    return spec_argv0 in bare or os.path.abspath(spec_argv0) == os.path.abspath(sys.executable)


@pytest.fixture(scope="session")
def kernel_name(tmp_path_factory):
    """Return a kernel name whose spec runs this interpreter (the venv), installing one into a temp dir if needed."""
    pytest.importorskip("papermill")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        if _this_python(KernelSpecManager().get_kernel_spec("python3").argv[0]):
            yield "python3"
            return
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(prefix=str(prefix), kernel_name="python3")  # argv[0] = sys.executable
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(prefix / "share" / "jupyter"), old]))
    try:
        assert _this_python(KernelSpecManager().get_kernel_spec("python3").argv[0])
        yield "python3"
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


def _fill(value: object, tmp: Path) -> object:
    return value.replace("{tmp}", str(tmp)) if isinstance(value, str) else value


def _run_notebook(path: Path, out_dir: Path, kernel_name: str, threads: int) -> tuple[Path, float, str]:
    """Return (executed notebook, seconds, stderr tail) after running ``path`` with its SMALL parameters in a subprocess."""
    parameters = {k: _fill(v, out_dir) for k, v in SMALL[path.name].items()}
    out = out_dir / path.name
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(path), str(out), "-y", json.dumps(parameters), "--cwd", str(NOTEBOOKS),
         "-k", kernel_name, "--no-progress-bar", "--execution-timeout", "900"],
        capture_output=True, text=True, env=env,
    )
    return out, time.perf_counter() - started, proc.stderr[-2000:]


@pytest.fixture(scope="session")
def notebook_runs(request, kernel_name, tmp_path_factory):
    """Return {notebook name: future of _run_notebook} for the notebooks this session selected, run concurrently.

    Each notebook starts its own kernel, imports torch and loads the model, mostly on one core; running two at
    once (with one compute thread each on a 2-core machine) overlaps those phases instead of idling a core.
    """
    selected = [item.callspec.params["path"] for item in request.session.items
                if item.originalname == "test_notebook_runs" and hasattr(item, "callspec")]
    workers = max(1, min(len(selected), 4, (os.cpu_count() or 1)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ThreadPoolExecutor(max_workers=workers)
    runs = {p.name: pool.submit(_run_notebook, p, tmp_path_factory.mktemp(p.stem), kernel_name, threads)
            for p in selected}
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_runs(path, notebook_runs):
    out, seconds, stderr = notebook_runs[path.name].result()
    print(f"\n{path.name}: {seconds:.0f} s (run concurrently with other notebooks)")
    if not out.exists():
        pytest.fail(f"{path.name}: papermill wrote no output notebook: {stderr}", pytrace=False)
    executed = nbformat.read(out, as_version=4)
    errors = [(c.execution_count, o) for c in executed.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    if errors:  # one readable line: which cell, which error
        count, error = errors[0]
        pytest.fail(f"{path.name}: cell {count} raised {error.ename}: {error.evalue}", pytrace=False)
    unexecuted = [c for c in executed.cells if c.cell_type == "code" and c.source.strip() and c.execution_count is None]
    assert not unexecuted, f"{path.name}: {len(unexecuted)} cells did not run: {stderr}"
