"""Notebook parameters are checked in one call before the model loads; the error's one line names the parameter."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from llmlatent import model, notebook
from llmlatent.errors import UsageError
from llmlatent.experiments.cache import CacheSettings
from llmlatent.experiments.patching import PatchSettings
from llmlatent.experiments.steering.plan import SteeringSettings
from llmlatent.experiments.sweep import SweepSettings

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TRANSLATION = {"task": "translation", "src": "fr", "tgt": "zh", "n_prompts": None}
REPETITION = {"task": "repetition", "tgt": "zh"}  # the source is the target


@pytest.fixture(autouse=True)
def no_model_load(monkeypatch):
    """Fail any test here that would load a model: checking must read at most a config.json."""

    def refuse(*args, **kwargs):
        raise AssertionError("notebook.check loaded a model")

    monkeypatch.setattr(model, "load", refuse)


def failure(experiment, **kwargs) -> str:
    """Return the one-line message of the UsageError that ``notebook.check`` raises for ``kwargs``."""
    with pytest.raises(UsageError) as info:
        notebook.check(experiment, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("experiment", "kwargs", "parameter", "says"),
    [
        (SweepSettings, {**TRANSLATION, "src": "xx"}, "src = 'xx'", "unknown language 'xx'"),
        (SweepSettings, {**TRANSLATION, "src": "zh"}, "src = 'zh'", "translation needs two different languages"),
        (SweepSettings, {**TRANSLATION, "tgt": "fr"}, "tgt = 'fr'", "translation needs two different languages"),
        (SweepSettings, {**TRANSLATION, "n_prompts": 0}, "n_prompts = 0", "must be at least 1, got 0"),
        (SweepSettings, {**TRANSLATION, "ci": "exact"}, "ci = 'exact'", "ci must be one of normal, bootstrap"),
        (SweepSettings, {**REPETITION, "tgt": "xx"}, "tgt = 'xx'", "unknown language 'xx'"),
        (SweepSettings, {**TRANSLATION, "dtype": "float16"}, "dtype = 'float16'", "Gemma must not run in float16"),
        (SweepSettings, {**TRANSLATION, "dtype": "int8"}, "dtype = 'int8'", "torch dtype of floating point"),
        (SweepSettings, {**TRANSLATION, "device": "cuda:7"}, "device = 'cuda:7'", "use --device cpu"),
        (PatchSettings, {"n_pairs": 1}, "n_pairs = 1", "at least 2 pairs"),
        (PatchSettings, {"donor": "de-fr"}, "donor = 'de-fr'", "must look like SRC:TGT"),
        (PatchSettings, {"receiver": "ru:fr"}, "receiver = 'ru:fr'", "must answer in different languages"),
        (CacheSettings, {"dtype_store": "int4"}, "dtype_store = 'int4'", "one of"),
        (SteeringSettings, {"source": "ru", "target": "ru"}, "target = 'ru'", "three different languages"),
        (None, {"counts": {"k": 0, "positions": 4}}, "k = 0", "k must be at least 1, got 0"),
    ],
)
def test_a_bad_parameter_is_named_with_its_fix(experiment, kwargs, parameter, says):
    message = failure(experiment, **kwargs)
    assert message.startswith(f"notebook parameter {parameter}")
    assert says in message
    first = parameter.split(" ")[0]
    assert message.endswith(f"fix it in the parameters cell (papermill: -p {first} VALUE)")


def test_a_bad_model_is_named_before_anything_loads(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    message = failure(SweepSettings, model=str(tmp_path / "weights.bin"), **TRANSLATION)
    assert message.startswith(f"notebook parameter model = '{tmp_path / 'weights.bin'}': model ")
    assert "is a file; pass the model folder" in message
    message = failure(None, model=str(tmp_path))
    assert "has no config.json" in message and message.startswith("notebook parameter model = ")


def test_two_bad_parameters_name_the_first_one_checked():
    message = failure(SweepSettings, **{**TRANSLATION, "n_prompts": 0, "src": "xx"})
    assert message.startswith("notebook parameter n_prompts = 0: ")  # resetting src alone leaves this same error


def test_good_parameters_give_the_settings():
    settings = notebook.check(SweepSettings, **{**TRANSLATION, "n_prompts": 3})
    assert settings == SweepSettings(task="translation", src="fr", tgt="zh", n_prompts=3)
    patch = notebook.check(PatchSettings, donor="de:fr", receiver="ru:zh", mean_over=["de", "en"], layers=[4, 2])
    assert patch == PatchSettings(donor=("de", "fr"), receiver=("ru", "zh"), mean_over=("de", "en"), layers=(4, 2))
    assert notebook.check(counts={"k": 3}) is None


def code_cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def call_text(source: str, start: int) -> str:
    """Return the call starting at ``start`` up to its closing parenthesis."""
    depth = 0
    for i in range(source.index("(", start), len(source)):
        depth += {"(": 1, ")": -1}.get(source[i], 0)
        if depth == 0:
            return source[start : i + 1]
    raise AssertionError("unbalanced call")


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_checks_its_parameters_before_loading(path):
    source = "\n".join(code_cells(path)[1:])  # after the parameters cell
    check = source.find("notebook.check(")
    assert check != -1, f"{path.name} does not check its parameters"
    load = source.find("notebook.load(")
    assert load == -1 or check < load, f"{path.name} loads the model before checking its parameters"
    called = call_text(source, check)
    for option in ("model", "dtype", "device", "device_map"):
        assert f"{option}={option}" in called, f"{path.name}: notebook.check misses {option}"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_parameter_is_named_as_the_field_it_sets(path):
    """A parameter passed to notebook.check sets the field of its own name, so the settings' messages name it."""
    cells = code_cells(path)
    parameters = {t.id for node in ast.parse(cells[0]).body for t in getattr(node, "targets", [])}
    source = "\n".join(cells[1:])
    call = ast.parse(call_text(source, source.find("notebook.check(")).strip()).body[0].value
    for keyword in call.keywords:
        if keyword.arg == "counts":  # {"name": name, …}: a count is named by its key
            pairs = [p for d in ast.walk(keyword.value) if isinstance(d, ast.Dict) for p in zip(d.keys, d.values)]
            assert all(ast.literal_eval(k) == v.id for k, v in pairs if k is not None), f"{path.name}: counts"
            continue
        used = {n.id for n in ast.walk(keyword.value) if isinstance(n, ast.Name)} & parameters
        assert keyword.arg is None or used <= {keyword.arg}, f"{path.name}: {keyword.arg}= takes {used}"
        assert keyword.arg != "names", f"{path.name}: parameters are named as the fields, no names= mapping"


@pytest.mark.slow
def test_papermill_with_n_prompts_0_fails_in_the_setup_cell_naming_it(tmp_path):
    pytest.importorskip("papermill")
    pytest.importorskip("ipykernel")
    from test_notebooks import ensure_kernel

    kernel = ensure_kernel(tmp_path / "jupyter")  # a kernel running this interpreter
    out = tmp_path / "out.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(NOTEBOOKS / "02_translation.ipynb"), str(out), "-p", "n_prompts", "0"]
        + ["-p", "out_dir", str(tmp_path / "results"), "--cwd", str(NOTEBOOKS), "-k", kernel, "--no-progress-bar"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(NOTEBOOKS.parent), "OMP_NUM_THREADS": "1"},  # this checkout's package
    )
    assert proc.returncode != 0
    cells = json.loads(out.read_text())["cells"]
    errors = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "UsageError"
    assert errors[0]["evalue"].startswith("notebook parameter n_prompts = 0: ")
    assert "papermill: -p n_prompts VALUE" in proc.stderr.strip().splitlines()[-1]
    logged = json.dumps(cells)
    assert "model google/gemma-3-270m" not in logged  # notebook.load logs the model it loaded: it never ran
    assert not (tmp_path / "results").exists()
