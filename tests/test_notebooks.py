"""The numbered notebooks: committed without outputs, a `parameters` cell first, and each runs top to bottom.

Execution uses papermill with small parameters (outputs under pytest's tmp_path, never the repo) and
cwd = notebooks/, like a user running them. Run only these with ``pytest -m notebooks``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
RUNNER = pytest.StashKey["Runner | None"]()  # set by tests/conftest.py when collection ends

# Small parameters per notebook; "{tmp}" is replaced by the test's tmp_path.
SMALL: dict[str, dict] = {
    "01_logit_lens_playground.ipynb": {"k": 3, "positions": 4, "generate": 2},
    "02_translation.ipynb": {"n_prompts": 6, "out_dir": "{tmp}/02", "latent": "en,de", "paper_repo": "{tmp}/paper"},
    "03_repetition.ipynb": {
        "n_prompts": 6,
        "out_dir": "{tmp}/03",
        "compare_filters": True,
    },  # the variants cell, cheaply
    "04_cloze.ipynb": {"n_prompts": 6, "out_dir": "{tmp}/04"},
    "05_latents.ipynb": {"n_prompts": 6, "cache_dir": "{tmp}/05"},
    "06_steering_ru_zh.ipynb": {
        "n_concepts": 6,
        "layers": [6],
        "alphas": [4.0],
        "n_random": 1,
        "flip": False,
        "n_examples": 2,
        "max_new_tokens": 3,
        "out_dir": "{tmp}/06",
        "latents_dir": "{tmp}/06_latents",
    },
    "07_paper_figures.ipynb": {
        "results": "{tmp}/results",
        "figures_dir": "{tmp}/figures",
        "n_prompts": 3,
        "langs": ["en", "zh"],
    },
    "08_patching.ipynb": {"n_pairs": 3, "layers": [4, 12, 17], "mean_over": ["de", "en"], "out_dir": "{tmp}/08"},
    "09_geometry.ipynb": {
        "from_latents": "{tmp}/09_store",
        "n_prompts": 4,
        "n_paths": 4,
        "n_tokens": 300,
        "out_dir": "{tmp}/09",
    },
    "10_steering_benchmark.ipynb": {
        "langs": ["en", "zh"],
        "n_concepts": 6,
        "layers": [6],
        "alphas": [4.0],
        "max_new_tokens": 2,
        "out_dir": "{tmp}/10",
        "latents_dir": "{tmp}/10_latents",
    },
}


def _made_up_paper_repo(tmp: Path) -> None:
    """Write a clone-shaped folder whose 7b_zh_lines.csv has the paper's format (made-up numbers, not its data)."""
    folder = tmp / "paper" / "R" / "data" / "data_for_sphere_plots"
    folder.mkdir(parents=True, exist_ok=True)
    depth = [(i + 1) / 32 for i in range(32)]
    rows = ["entropy,energy,en,zh"] + [f"{14 - 12 * d:.3f},0.25,{d * (1 - d):.3f},{d**4:.3f}" for d in depth]
    (folder / "7b_zh_lines.csv").write_text("\n".join(rows) + "\n")


PREPARE = {"02_translation.ipynb": _made_up_paper_repo}  # inputs a notebook's SMALL parameters point to
WRITES = {"02_translation.ipynb": ["02/fr-zh/paper_overlay_probabilities.png"]}  # files it must write under {tmp}


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


def ensure_kernel(prefix: Path) -> str:
    """Return a kernel name whose spec runs this interpreter (the venv), installing one under ``prefix`` if needed.

    An installed spec is found through JUPYTER_PATH, set for the rest of this test session.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        if _this_python(KernelSpecManager().get_kernel_spec("python3").argv[0]):
            return "python3"
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(prefix=str(prefix), kernel_name="python3")  # argv[0] = sys.executable
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        filter(None, [str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")])
    )
    assert _this_python(KernelSpecManager().get_kernel_spec("python3").argv[0])
    return "python3"


def _fill(value: object, tmp: Path) -> object:
    return value.replace("{tmp}", str(tmp)) if isinstance(value, str) else value


# a notebook runs in 30-50 s on 2 idle cores; a papermill process still alive after this is hung (e.g. its
# kernel died without nbclient noticing, seen once on a fresh clone): it is killed and run once more
NOTEBOOK_TIMEOUT = 420


def _run_notebook(
    path: Path, out_dir: Path, kernel_name: str, threads: int, running: set | None = None, attempts: int = 2
) -> tuple[Path, float, str]:
    """Return (executed notebook, seconds, stderr tail) after running ``path`` with its SMALL parameters."""
    parameters = {k: _fill(v, out_dir) for k, v in SMALL[path.name].items()}
    out = out_dir / path.name
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    for attempt in range(attempts):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "papermill",
                str(path),
                str(out),
                "-y",
                json.dumps(parameters),
                "--cwd",
                str(NOTEBOOKS),
                "-k",
                kernel_name,
                "--no-progress-bar",
                "--execution-timeout",
                "900",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        if running is not None:
            running.add(proc)
        try:
            _, stderr = proc.communicate(timeout=NOTEBOOK_TIMEOUT)
            break
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
            hung = f"papermill hung for {NOTEBOOK_TIMEOUT} s (attempt {attempt + 1} of {attempts}) and was killed"
            stderr = f"{hung}\n{stderr}"
            if out.exists() and attempt + 1 < attempts:
                out.unlink()  # the retry must not pass on a stale output notebook
        finally:
            if running is not None:
                running.discard(proc)
    return out, time.perf_counter() - started, stderr[-2000:]


class Runner:
    """Runs the selected notebooks in the background, each in its own papermill process and kernel.

    Started when collection ends (``tests/conftest.py``) with one worker thread and one compute thread,
    so the notebooks use one core while the rest of the suite (mostly one thread) uses the other. The
    notebook tests run last; when the first of them waits, a second worker joins, so the notebooks
    still left run two at a time.
    """

    def __init__(self, paths: list[Path], root: Path) -> None:
        self.root, self.kernel = root, None
        self.todo: queue.Queue[Path] = queue.Queue()
        for path in paths:
            self.todo.put(path)
        self.futures: dict[str, Future] = {path.name: Future() for path in paths}
        self.workers: list[threading.Thread] = []
        self.running: set[subprocess.Popen] = set()

    def stop(self) -> None:
        """Drop the notebooks not started yet and end the running ones (a session that stops early)."""
        while not self.todo.empty():
            self.todo.get_nowait()
        for proc in list(self.running):
            proc.kill()
        for worker in self.workers:
            worker.join(timeout=30)

    def add_worker(self) -> None:
        """Start one more worker thread (each takes the next notebook from the queue)."""
        worker = threading.Thread(target=self._work, daemon=True)
        worker.start()
        self.workers.append(worker)

    def _work(self) -> None:
        while True:
            try:
                path = self.todo.get_nowait()
            except queue.Empty:
                return
            future = self.futures[path.name]
            try:
                out_dir = self.root / path.stem
                out_dir.mkdir(parents=True, exist_ok=True)
                PREPARE.get(path.name, lambda tmp: None)(out_dir)
                future.set_result(_run_notebook(path, out_dir, self.kernel, threads=1, running=self.running))
            except BaseException as exc:  # reported by that notebook's test
                future.set_exception(exc)


def start_background(items: list[pytest.Item], root: Path) -> Runner | None:
    """Return a started :class:`Runner` for the notebooks among ``items`` (None when none is selected)."""
    paths = [
        item.callspec.params["path"]
        for item in items
        if getattr(item, "originalname", None) == "test_notebook_runs" and hasattr(item, "callspec")
    ]
    if not paths or importlib.util.find_spec("papermill") is None or importlib.util.find_spec("ipykernel") is None:
        return None
    runner = Runner(paths, root)
    runner.kernel = ensure_kernel(root / "jupyter")  # here, not in a worker: imports are not thread-safe
    runner.add_worker()
    return runner


@pytest.fixture(scope="session")
def notebook_runs(request):
    """Return {notebook name: future of _run_notebook}: the background runner's, with a second worker added now."""
    pytest.importorskip("papermill")
    pytest.importorskip("ipykernel")
    runner = request.config.stash.get(RUNNER, None)
    if runner is None:  # collected without the conftest hook (e.g. run from another rootdir)
        runner = start_background(request.session.items, Path(tempfile.mkdtemp(prefix="llmlatent-notebooks-")))
    if (os.cpu_count() or 1) > 1:
        runner.add_worker()
    return runner.futures


@pytest.mark.notebooks
@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_runs(path, notebook_runs):
    out, seconds, stderr = notebook_runs[path.name].result()
    print(f"\n{path.name}: {seconds:.0f} s (run in the background, beside other tests)")
    if not out.exists():
        pytest.fail(f"{path.name}: papermill wrote no output notebook: {stderr}", pytrace=False)
    executed = nbformat.read(out, as_version=4)
    errors = [
        (c.execution_count, o)
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    if errors:  # one readable line: which cell, which error
        count, error = errors[0]
        pytest.fail(f"{path.name}: cell {count} raised {error.ename}: {error.evalue}", pytrace=False)
    unexecuted = [c for c in executed.cells if c.cell_type == "code" and c.source.strip() and c.execution_count is None]
    assert not unexecuted, f"{path.name}: {len(unexecuted)} cells did not run: {stderr}"
    missing = [f for f in WRITES.get(path.name, []) if not (out.parent / f).is_file()]
    assert not missing, f"{path.name} did not write {missing}"
