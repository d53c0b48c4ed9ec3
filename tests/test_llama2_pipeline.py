"""The paper's setting in miniature: a Llama-2-shaped model (random weights, tiny dims) with the real Llama-2
tokenizer (32,000 tokens), through the command line: sweep (bundled words, the paper's word files, a prompt
file), cache, steer. The run records must show the token sets that were used."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from llmlatent import cli

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = Path(__file__).parent / "data"


def run(*argv: str) -> None:
    assert cli.main(list(argv)) == 0


def token_lists(frame: pd.DataFrame, column: str) -> list[list[str]]:
    return [json.loads(s) for s in frame[column]]


def test_sweep_cache_and_steer_on_a_llama2_shaped_model(llama2_folder, tmp_path):
    model = str(llama2_folder)
    common = ("--model", model, "--batch-size", "8")
    run(
        "sweep",
        *common,
        "--task",
        "translation",
        "--src",
        "fr",
        "--tgt",
        "zh",
        "--n",
        "6",
        "--out",
        str(tmp_path / "bundled"),
    )
    run(
        "sweep",
        *common,
        "--task",
        "cloze",
        "--tgt",
        "de",
        "--words",
        str(DATA / "seed_langs"),
        "--out",
        str(tmp_path / "cloze"),
    )
    run("sweep", *common, "--prompts", str(DATA / "seed_prompts.csv"), "--out", str(tmp_path / "file"))
    for name, n in (("bundled", 6), ("file", 6)):
        record = json.loads((tmp_path / name / "run.json").read_text())
        assert record["n_prompts"] == n and "target_tokens" in record["token_sets"]
        rows = pd.read_csv(tmp_path / name / "rows.csv")
        assert sorted(rows["layer"].unique()) == [0, 1] and rows["p_target"].between(0, 1).all()
        prompts = pd.read_csv(tmp_path / name / "prompts.csv", dtype=str, keep_default_na=False)
        targets = token_lists(prompts, "target_tokens")
        # Chinese sets on Llama-2: the character's token and its first byte, never the bare "▁"
        assert all("▁" not in t and any(s.startswith("<0x") for s in t) for t in targets)
        assert all(t == json.loads(i) or len(t) == len(json.loads(i)) for t, i in zip(targets, prompts["target_ids"]))
        english = token_lists(prompts, "english_tokens")
        assert all(not any(s.startswith("<0x") for s in e) and any(s.startswith("▁") for s in e) for e in english)
    cloze = pd.read_csv(tmp_path / "cloze" / "prompts.csv", dtype=str, keep_default_na=False)
    assert len(cloze) >= 3 and cloze["prompt"].str.endswith('Antwort: "').all()
    for prompt, word in zip(cloze["prompt"], cloze["tgt_word"]):
        assert f'"{word}"' not in prompt  # the query does not contain its own answer

    run(
        "cache",
        *common,
        "--task",
        "translation",
        "--src",
        "fr",
        "--tgt",
        "zh",
        "--n",
        "6",
        "--out",
        str(tmp_path / "store"),
    )
    from llmlatent import latents

    info = latents.info(tmp_path / "store")
    assert info["n_prompts"] == 6 and info["complete"]

    run(
        "steer",
        "--model",
        model,
        "--n-concepts",
        "12",
        "--layers",
        "1",
        "--alphas",
        "1",
        "--generate",
        "2",
        "--random",
        "1",
        "--no-flip",
        "--max-new-tokens",
        "2",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "steer"),
    )
    best = json.loads((tmp_path / "steer" / "best.json").read_text())
    assert best["layer"] == 1 and best["alpha"] == 1
