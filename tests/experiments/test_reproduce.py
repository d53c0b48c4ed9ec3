"""The reproduce pipeline on a tiny saved model: outputs, figures, and reuse of cached runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import save_model

from llmlatent import cli
from llmlatent.experiments import reproduce


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, tiny_models):
    return save_model(
        tiny_models["gpt2"], tmp_path_factory.mktemp("tiny-gpt2")
    )  # small BPE vocabulary: fast to save and load


def test_reproduce_runs_and_reuses_cache(tiny_path, tmp_path):
    results, figures = tmp_path / "results", tmp_path / "figures"
    first = reproduce.run_all(str(tiny_path), results=results, figures=figures, n=3, only="repetition")
    assert first["runs"] == 5
    pivot = pd.read_csv(results / "pivot_summary.csv")
    assert sorted(pivot["tgt"]) == ["de", "en", "fr", "ru", "zh"] and (pivot["n_prompts"] == 3).all()
    assert (figures / "grid_repetition.png").exists() and (figures / "repetition_zh_probabilities.pdf").exists()
    assert (figures / "hand_prompt_lens.png").exists() and (figures / "hand_prompt_generation.pdf").exists()
    assert set(pd.read_csv(results / "hand_prompt_generation.csv")["rank"]) == {1, 2, 3}
    stamp = (results / "repetition" / "zh-zh" / "rows.csv").stat().st_mtime_ns
    reproduce.run_all(str(tiny_path), results=results, figures=figures, n=3, only="repetition")
    assert (results / "repetition" / "zh-zh" / "rows.csv").stat().st_mtime_ns == stamp  # reused
    reproduce.run_all(str(tiny_path), results=results, figures=figures, n=4, only="repetition")
    assert pd.read_csv(results / "pivot_summary.csv")["n_prompts"].eq(4).all()  # settings changed -> recomputed


def test_lens_cli_prints_one_row_per_layer(tiny_path, capsys):
    assert (
        cli.main(["lens", 'Français: "fleur" - 中文: "花"\\nFrançais: "nuage" - 中文: "', "--model", str(tiny_path)])
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].split() == ["top1", "top2", "top3", "top4", "top5"]
    assert [line.split()[0] for line in out[2:]] == ["0", "1", "2"]


def test_user_folders_beside_the_runs_are_skipped(tmp_path):
    """A user's own sweep under results/translation/ (e.g. fr-zh-strict) is not a grid panel and does not crash."""
    for name in ("fr-zh", "fr-zh-strict", "mine"):
        (tmp_path / "translation" / name).mkdir(parents=True)
        pd.DataFrame({"layer": [0], "p_target_mean": [0.5]}).to_csv(tmp_path / "translation" / name / "summary.csv")
    for name in ("fr-zh-strict", "fr-zh"):  # both hold fr→zh; "mine" has no run.json
        (tmp_path / "translation" / name / "run.json").write_text(
            json.dumps(
                {
                    "cache_key": {"kind": "sweep"},
                    "task": "translation",
                    "src": "fr",
                    "tgt": "zh",
                    "strict": name != "fr-zh",
                }
            )
        )
    (tmp_path / "translation" / "fr-zh" / "summary.csv").write_text("layer,p_target_mean\n0,0.25\n")
    summaries = reproduce.load_summaries(tmp_path, "translation")
    assert list(summaries) == [("fr", "zh")]
    assert summaries[("fr", "zh")]["p_target_mean"].tolist() == [0.25]  # the src-tgt folder wins over fr-zh-strict
