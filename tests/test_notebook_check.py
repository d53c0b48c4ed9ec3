"""Notebook parameters are checked in one call before the model loads; the error's one line names the parameter."""

from __future__ import annotations

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
TRANSLATION = {"names": {"n_prompts": "n"}, "task": "translation", "src": "fr", "tgt": "zh", "n_prompts": None}
REPETITION = {"names": {"n_prompts": "n", "src": "lang", "tgt": "lang"}, "task": "repetition", "src": "zh", "tgt": "zh"}


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
        (SweepSettings, {**TRANSLATION, "n_prompts": 0}, "n = 0", "must be at least 1, got 0"),
        (SweepSettings, {**TRANSLATION, "ci": "exact"}, "ci = 'exact'", "ci must be one of normal, bootstrap"),
        (SweepSettings, {**REPETITION, "src": "xx", "tgt": "xx"}, "lang = 'xx'", "unknown language 'xx'"),
        (SweepSettings, {**TRANSLATION, "dtype": "float16"}, "dtype = 'float16'", "Gemma must not run in float16"),
        (SweepSettings, {**TRANSLATION, "dtype": "int8"}, "dtype = 'int8'", "torch dtype of floating point"),
        (SweepSettings, {**TRANSLATION, "device": "cuda:7"}, "device = 'cuda:7'", "use --device cpu"),
        (PatchSettings, {"names": {"n_pairs": "n"}, "n_pairs": 1}, "n = 1", "at least 2 pairs"),
        (PatchSettings, {"donor": "de-fr"}, "donor = 'de-fr'", "must look like SRC:TGT"),
        (PatchSettings, {"receiver": "ru:fr"}, "receiver = 'ru:fr'", "must answer in different languages"),
        (CacheSettings, {"names": {"dtype_store": "storage_dtype"}, "dtype_store": "int4"}, "storage_dtype", "one of"),
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
    assert message.startswith("notebook parameter n = 0: ")  # resetting src alone leaves this same error


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


@pytest.mark.slow
def test_papermill_with_n_0_fails_in_the_setup_cell_naming_n(tmp_path):
    pytest.importorskip("papermill")
    pytest.importorskip("ipykernel")
    from test_notebooks import ensure_kernel

    kernel = ensure_kernel(tmp_path / "jupyter")  # a kernel running this interpreter
    out = tmp_path / "out.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(NOTEBOOKS / "02_translation.ipynb"), str(out), "-p", "n", "0"]
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
    assert errors[0]["evalue"].startswith("notebook parameter n = 0: ")
    assert "papermill: -p n VALUE" in proc.stderr.strip().splitlines()[-1]
    logged = json.dumps(cells)
    assert "model google/gemma-3-270m" not in logged  # notebook.load logs the model it loaded: it never ran
    assert not (tmp_path / "results").exists()
