"""`llmlatent steer` end to end on language pairs beyond the paper's five (tiny model, real Gemma 3 tokenizer): the
output-language judge knows every bundled language's script, so no pair dies after the grid (issue 26)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from llmlatent import cli

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = [
    "--layers",
    "0,2",
    "--alphas",
    "1",
    "4",
    "--n-concepts",
    "12",
    "--n-random",
    "1",
    "--max-new-tokens",
    "2",
    "--n-generate",
    "2",
    "--n-flip",
    "2",
    "--batch-size",
    "4",
    "--seed",
    "1",
]


@pytest.mark.parametrize(
    ("source", "target", "via", "script", "shared"),
    [
        ("es", "ja", "fr", "Han+Hiragana+Katakana", []),  # the failing command
        ("ko", "uk", "de", "Cyrillic", []),  # two non-Latin scripts, neither of the paper's five
        ("pt", "es", "it", "Latin", ["pt", "it", "en"]),  # a shared script: named, never passed off as a language share
    ],
)
def test_steer_runs_end_to_end_on_any_bundled_pair(
    tiny_models, tmp_path, monkeypatch, source, target, via, script, shared
):
    model = tiny_models["gemma3_text"]
    monkeypatch.setattr(cli, "load_model", lambda args: model)
    out = tmp_path / f"{source}-{target}"
    argv = ["steer", "--source", source, "--target", target, "--via", via, *FAST, "--out", str(out)]
    assert cli.main(argv) == 0
    best = json.loads((out / "best.json").read_text())
    assert (best["source"], best["target"], best["target_script"]) == (source, target, script)
    assert best["target_script_shared_with"] == shared
    assert 0.0 <= best["target_script_top1_share"] <= 1.0 and best["flip"]["direction"] == f"{target}→{source}"
    rows = pd.read_csv(out / "rows.csv")
    assert set(rows["direction"]) == {f"{source}→{target}", f"{target}→{source}"}
    assert rows["top1_target_script"].dtype == bool and rows["top1_source_script"].dtype == bool
    gens = pd.read_csv(out / "generations.csv")
    assert len(gens) and gens["answer_target_script"].dtype == bool
    summary = pd.read_csv(out / "summary.csv")
    assert "target_script_top1_share" in summary and summary["generation_target_share"].notna().any()
