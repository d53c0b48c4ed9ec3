"""One cache key per sweep folder: every setting that shapes the result changes it; batch size does not."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from llmlatent import tasks
from llmlatent.experiments import reproduce, runs
from llmlatent.experiments import sweep as experiment
from llmlatent.experiments.figures import plots
from llmlatent.languages.registry import words_dir
from llmlatent.lens import last_token as lens

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {
    "task": "translation",
    "src": "fr",
    "tgt": "zh",
    "n": 3,
    "seed": 0,
    "strict": False,
    "cognate_filter": False,
    "n_shots": None,
    "words_dir": None,
}


def _key(model, tokenizer, *, sweep_seed=0, ci="normal", **changes):
    opts = {**BASE, **changes}
    prompts = tasks.build(opts.pop("task"), opts.pop("src"), opts.pop("tgt"), tokenizer, **opts)
    return runs.key_of(experiment.SweepSettings(prompt_set=prompts, seed=sweep_seed, ci=ci), model)


@pytest.fixture(scope="module")
def base_run(tiny_models, spm_tokenizer, tmp_path_factory):
    model = tiny_models["llama"]
    out = tmp_path_factory.mktemp("run") / "fr-zh"
    prompts = tasks.build("translation", "fr", "zh", spm_tokenizer, n=3, seed=0)
    run = runs.run(experiment.SweepSettings(prompt_set=prompts, batch_size=2, seed=0, progress=False), model, out)
    return model, out, run


def test_run_json_holds_its_key_and_the_same_settings_reuse_it(base_run, spm_tokenizer):
    model, out, run = base_run
    key = _key(model, spm_tokenizer)
    assert json.loads((out / "run.json").read_text())["cache_key"] == key == run["cache_key"]
    assert runs.cached(out, key) is not None
    assert key["model"] == {k: model.fingerprint()[k] for k in ("unembedding_sha256", "n_layers", "hidden_size")}
    # batch size groups prompts of similar length; it is not a result setting
    assert "batch_size" not in json.dumps(key["settings"])


@pytest.mark.parametrize(
    "change",
    [
        {"task": "repetition", "src": "zh"},
        {"src": "de"},
        {"tgt": "ru"},
        {"n": 4},
        {"seed": 1},
        {"strict": True},
        {"cognate_filter": True},
        {"n_shots": 2},
        {"sweep_seed": 1},
        {"ci": "bootstrap"},
    ],
    ids=lambda c: "+".join(c),
)
def test_each_setting_changes_the_key(base_run, spm_tokenizer, change):
    model, out, _ = base_run
    assert runs.cached(out, _key(model, spm_tokenizer, **change)) is None


def test_edited_word_file_changes_the_key(base_run, spm_tokenizer, tmp_path):
    model, out, _ = base_run
    words = tmp_path / "langs"
    shutil.copytree(words_dir(), words)
    assert runs.cached(out, _key(model, spm_tokenizer, words_dir=words)) is not None  # same content: same key
    zh = words / "zh.csv"
    prompts = tasks.build("translation", "fr", "zh", spm_tokenizer, n=3, seed=0)
    used = prompts.df["tgt_word"].iloc[-1]  # a word that is in a prompt or a token set
    zh.write_text(zh.read_text(encoding="utf-8").replace(f",{used},", ",书,", 1), encoding="utf-8")
    assert runs.cached(out, _key(model, spm_tokenizer, words_dir=words)) is None


def test_other_model_or_dtype_changes_the_key(base_run, tiny_models, spm_tokenizer):
    model, out, _ = base_run
    assert runs.cached(out, _key(tiny_models["qwen2"], spm_tokenizer)) is None
    key = _key(model, spm_tokenizer)
    in_bf16 = SimpleNamespace(hf=SimpleNamespace(dtype=torch.bfloat16), fingerprint=model.fingerprint)  # same weights
    other = _key(in_bf16, spm_tokenizer)
    assert other["settings"]["dtype"] == "torch.bfloat16" != key["settings"]["dtype"]
    assert runs.cached(out, other) is None


def test_reproduce_recomputes_exactly_when_a_setting_changes(tiny_models, tmp_path, monkeypatch):
    """reproduce reuses a sweep folder only when the key matches: same settings → no sweep; another seed or force →
    a sweep."""
    from conftest import save_model

    path = save_model(tiny_models["gpt2"], tmp_path / "model")  # small BPE vocabulary: fast to load
    monkeypatch.setattr(reproduce, "run_specs", lambda langs=(): [("repetition", "fr", "fr")])
    monkeypatch.setattr(plots, "save", lambda fig, stem: [])  # figures are not what this test is about (saves time)
    calls = []
    real = lens.sweep
    monkeypatch.setattr(lens, "sweep", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    kwargs = {"results": tmp_path / "results", "figures": tmp_path / "figures", "only": "repetition"}
    for seed, expected in ((0, 1), (0, 1), (1, 2)):  # n is covered by test_reproduce_runs_and_reuses_cache
        reproduce.run_all(str(path), n=3, seed=seed, **kwargs)
        assert len(calls) == expected, seed
    reproduce.run_all(str(path), n=3, seed=1, force=True, **kwargs)
    assert len(calls) == 3


def test_fingerprint_is_the_one_definition_of_same_model(tiny_models, tmp_path):
    """Model.fingerprint() is a Fingerprint: same_model ignores the name (hub id vs path), reads like its stored
    dict."""
    from llmlatent.adapter import Fingerprint, same_model

    fp = tiny_models["gpt2"].fingerprint()
    assert isinstance(fp, Fingerprint)
    stored = json.loads(json.dumps(fp.to_dict()))  # as in run.json / store.json
    assert stored == fp and Fingerprint.of(stored) == fp and fp["n_layers"] == stored["n_layers"] == 3
    renamed = {**stored, "model": "/some/local/path"}
    assert same_model(fp, renamed) and renamed != fp
    assert not same_model(fp, {**stored, "unembedding_sha256": "0" * 16})
    assert not same_model(fp, {**stored, "n_layers": 4})
    assert not same_model(fp, tiny_models["qwen2"].fingerprint())
    key = runs.cache_key(experiment.EXPERIMENT, renamed, {"n": 1})
    assert key == runs.cache_key(experiment.EXPERIMENT, fp, {"n": 1})  # the cache key keys on identity, not the name


def test_a_folder_is_ours_only_by_record_and_manifest(base_run, tmp_path):
    """A lone run.json proves nothing; a real result with one extra user file is refused too; ours is replaced."""
    from llmlatent.errors import OutputFolderError
    from llmlatent.experiments.sweep import EXPERIMENT

    model, out, _ = base_run
    assert runs.is_ours(out, "sweep") and not runs.is_ours(out, "patching")
    runs.check_out(out, EXPERIMENT)  # a previous sweep of ours: may be replaced
    mine = tmp_path / "thesis"
    (mine / "src").mkdir(parents=True)
    (mine / "thesis.tex").write_text("precious")
    (mine / "run.json").write_text(json.dumps({"cache_key": {"kind": "sweep"}, "task": "translation"}))
    with pytest.raises(OutputFolderError, match="holds no previous result"):
        runs.check_out(mine, EXPERIMENT)
    (out / "notes.txt").write_text("a user's file beside our result")
    with pytest.raises(OutputFolderError, match="holds no previous result"):
        runs.check_out(out, EXPERIMENT)
    assert (mine / "thesis.tex").read_text() == "precious" and (out / "notes.txt").exists()
    (out / "notes.txt").unlink()  # base_run is shared by the module: leave it as it was


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tiny_models, spm_tokenizer, tmp_path, monkeypatch):
    import errno

    from llmlatent.errors import OutputFolderError

    prompts = tasks.build("translation", "fr", "zh", spm_tokenizer, n=2)
    real = plots.save

    def full(fig, stem):
        real(fig, stem)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plots, "save", full)
    with pytest.raises(OutputFolderError, match=r"no space left on the device of .*out after writing .* MB"):
        runs.run(experiment.SweepSettings(prompt_set=prompts, progress=False), tiny_models["llama"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no result, no temporary folder
