"""The detour experiment (Schut et al.) end to end on a tiny model: folder, record, summary, CLI, bad settings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llmlatent import cli, tasks
from llmlatent.experiments import detour, runs
from llmlatent.languages.words import read_table
from llmlatent.lens import generation as genlens

pytestmark = pytest.mark.usefixtures("one_thread")


def test_detour_end_to_end(tiny_models, tmp_path):
    model = tiny_models["gemma3_text"]
    settings = detour.DetourSettings(langs=("en", "fr", "zh"), n_prompts=3, max_new_tokens=2, batch_size=2)
    record = runs.run(settings, model, tmp_path / "detour")
    folder = tmp_path / "detour"
    assert {"rows.csv", "summary.csv", "detour.png", "detour.pdf", "generation.png", "run.json"} <= set(
        p.name for p in folder.iterdir()
    )
    assert record["targets"] == ["fr", "zh"] and record["sources"] == {"fr": "de", "zh": "fr"}
    rows, summary = pd.read_csv(folder / "rows.csv"), pd.read_csv(folder / "summary.csv")
    assert list(dict.fromkeys(summary["tgt"])) == ["fr", "zh"]  # the order of --langs
    # the summary is the mean over prompts of the rows (rank 1, one target, step 0, layer 1)
    part = rows[(rows["tgt"] == "zh") & (rows["step"] == 0) & (rows["layer"] == 1) & (rows["rank"] == 1)]
    line = summary[(summary["tgt"] == "zh") & (summary["step"] == 0) & (summary["layer"] == 1)].iloc[0]
    assert line["p_english"] == pytest.approx(part["p_en"].mean()) and line["p_target"] == pytest.approx(
        part["p_zh"].mean()
    )
    assert line["p_source"] == pytest.approx(part["p_fr"].mean()) and line["n_prompts"] == 3
    assert set(record["detour"]) == {"fr", "zh"}
    assert runs.run(settings, model, folder)["cache_key"] == record["cache_key"]  # reused
    runs.run(settings, model, tmp_path / "again")  # computed anew: the same bytes
    for name in ("rows.csv", "summary.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes()
    # the rows are the generation lens of the same prompts with the concept's word sets
    prompts = tasks.build("translation", "fr", "zh", model.tokenizer, n=3, seed=0).df
    sets = [{"en": list(r.english_ids), "zh": list(r.target_ids)} for r in prompts.itertuples()]
    gen = genlens.generation(model, prompts["prompt"].tolist(), sets, max_new_tokens=2, k=1).rows
    mine = rows[rows["tgt"] == "zh"].reset_index(drop=True)
    assert np.allclose(mine["p_en"], gen["p_en"], atol=1e-7) and np.allclose(mine["p_zh"], gen["p_zh"], atol=1e-7)


def test_other_languages_sets_are_disjoint_from_target_and_english(spm_tokenizer):
    prompts = tasks.build("translation", "fr", "de", spm_tokenizer, n=20, seed=0).df
    langs = ["en", "fr", "de", "ru"]
    table = read_table(langs).set_index("concept")
    for row, sets in zip(prompts.itertuples(), detour.prompt_sets(prompts, table, langs, spm_tokenizer)):
        assert sets["en"] == list(row.english_ids) and sets["de"] == list(row.target_ids)
        taken = set(sets["en"]) | set(sets["de"])
        assert not (set(sets["fr"]) | set(sets["ru"])) & taken


def test_headline_finds_the_peak_and_the_crossing():
    layers = np.arange(5)
    summary = pd.DataFrame({"tgt": "zh", "step": 0, "layer": layers,
                            "p_english": [0.0, 0.3, 0.5, 0.2, 0.1], "p_target": [0.0, 0.1, 0.4, 0.6, 0.9],
                            "top1_target": [0, 0, 0, 1, 1]})  # fmt: skip
    head = detour.headline(summary)["zh"]
    assert head["english_peak_layer"] == 2 and head["english_peak"] == 0.5 and head["target_overtakes_at"] == 3
    assert head["final_target"] == 0.9 and head["answers_start_target"] == 1
    never = summary.assign(p_target=0.0)
    assert detour.headline(never)["zh"]["target_overtakes_at"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--langs", "fr,zh"], "--langs must include en"),
        (["--langs", "en"], "needs a language other than en"),
        (["--alt-src", "fr"], "--alt-src must differ"),
        (["--langs", "en,xx"], "unknown language 'xx'"),
        (["--max-new-tokens", "0"], "must be at least 1"),
    ],
)
def test_bad_settings_get_one_line_before_the_model_loads(argv, message, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "load_model", lambda args: pytest.fail("the model must not load"))
    assert cli.main(["detour", *argv, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_detour_command(tiny_models, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "load_model", lambda args: tiny_models["gemma3_text"])
    argv = ["detour", "--langs", "en,zh", "--n", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "d")]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_prompts"] == {"zh": 2} and set(printed["detour"]) == {"zh"}


def test_reproduce_plans_the_detour_step_and_copies_its_figures(tmp_path):
    from llmlatent.experiments import reproduce

    steps = [s for s in reproduce.plan(reproduce.ReproduceSettings(n_detour=5, seed=2)) if s.folder == "detour"]
    assert len(steps) == 1 and steps[0].settings == detour.DetourSettings(n_prompts=5, seed=2)
    results, figures = tmp_path / "results", tmp_path / "figures"
    (results / "detour").mkdir(parents=True)
    figures.mkdir()
    for name in ("detour.png", "generation.pdf"):
        (results / "detour" / name).write_bytes(b"x")
    reproduce.copy_figures(results, figures)
    assert sorted(p.name for p in figures.iterdir()) == ["detour.png", "detour_generation.pdf"]


def test_first_answer_token_equals_the_last_prompt_token_sweep(tiny_models):
    """Step 0 decodes the prompt's last position: the paper's sweep of the same prompts, number for number."""
    from llmlatent.lens import last_token as lens

    model = tiny_models["llama"]
    result = detour.compute(model, detour.DetourSettings(langs=("en", "ru"), n_prompts=4, max_new_tokens=2))
    first = result.rows[(result.rows["step"] == 0) & (result.rows["rank"] == 1)].reset_index(drop=True)
    swept = lens.sweep(model, tasks.build("translation", "fr", "ru", model.tokenizer, n=4, seed=0), progress=False)
    assert first[["prompt_id", "layer"]].to_numpy().tolist() == swept[["prompt_id", "layer"]].to_numpy().tolist()
    # (p_source differs by design: the detour removes the target's and English's ids from the source set)
    for mine, theirs in (("p_en", "p_english"), ("p_ru", "p_target"), ("entropy", "entropy")):
        assert np.allclose(first[mine], swept[theirs], atol=1e-6), mine
