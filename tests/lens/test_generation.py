"""The lens at every position and along a greedy generation: exact under the KV cache, batch-free, hooks removed."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from llmlatent.errors import DataError, UsageError
from llmlatent.languages import scripts as tagging
from llmlatent.lens import generation as genlens
from llmlatent.tokens import token_set

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [
    'Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "',
    'English: "book" - Deutsch: "',
    "A cloud",
]
FAMILIES = ("gemma3_text", "llama", "gpt2")


def sets_for(model):
    """Two word sets on the model's vocabulary (the same names for every prompt)."""
    return {"en": token_set(model.tokenizer, "cloud"), "zh": token_set(model.tokenizer, "云")}


def numbers(rows):
    """The columns that must agree between two ways of computing the same rows: ids, probabilities."""
    return rows[["position", "layer", "rank", "token_id"]], rows[["probability", "p_en", "p_zh"]]


def assert_same(a, b, entropy_bits=1e-5, probability=1e-5):
    """Ids equal, probabilities within ``probability``, entropies (bits: a sum over the vocabulary) within
    ``entropy_bits``."""
    (ids_a, num_a), (ids_b, num_b) = numbers(a), numbers(b)
    assert (ids_a.to_numpy() == ids_b.to_numpy()).all()
    assert abs(num_a.to_numpy() - num_b.to_numpy()).max() <= probability
    assert abs(a["entropy"].to_numpy() - b["entropy"].to_numpy()).max() <= entropy_bits


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_a_full_forward_of_the_final_text(tiny_models, family):
    model = tiny_models[family]
    gen = genlens.generation(model, PROMPTS[0], sets_for(model), max_new_tokens=5, k=3)
    prompt_ids = model.tokenizer(PROMPTS[0])["input_ids"]
    full = genlens.positions(model, prompt_ids + gen.token_ids[0], sets_for(model), k=3)
    generated_positions = set(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(gen.token_ids[0])))
    full = full[full["position"].isin(generated_positions)].reset_index(drop=True)
    assert len(full) == len(gen.rows) == len(gen.token_ids[0]) * model.n_layers * 3
    assert_same(gen.rows, full)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_does_not_depend_on_batch_size_or_padding(tiny_models, family):
    model = tiny_models[family]
    together = genlens.generation(model, PROMPTS, sets_for(model), max_new_tokens=4, k=2, batch_size=3).rows
    alone = [genlens.generation(model, [p], sets_for(model), max_new_tokens=4, k=2).rows for p in PROMPTS]
    for i, rows in enumerate(alone):
        part = together[together["prompt_id"] == i].reset_index(drop=True)
        assert_same(part, rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_is_the_models_own_next_token_distribution(tiny_models, family):
    model = tiny_models[family]
    gen = genlens.generation(model, PROMPTS[1], max_new_tokens=3, k=4)
    prompt_ids = model.tokenizer(PROMPTS[1])["input_ids"]
    sequence = prompt_ids + gen.token_ids[0]
    with torch.no_grad():  # a plain forward, no llmlatent code
        probs = model.hf(input_ids=torch.tensor([sequence])).logits[0].float().softmax(-1)
    last = gen.rows[gen.rows["layer"] == model.n_layers - 1]
    for step, part in last.groupby("step"):
        own = probs[len(prompt_ids) - 1 + step]
        top = own.topk(4)
        assert part["token_id"].tolist() == top.indices.tolist()
        # float32 noise only: the lens decodes through its own float32 head in vocabulary slices, the model runs one
        # matmul; their summation orders differ by CPU kernel (1.6e-5 measured on an AMD EPYC, < 1e-5 elsewhere)
        assert abs(part["probability"].to_numpy() - top.values.double().numpy()).max() <= 5e-5
        assert part["token_id"].iloc[0] == gen.token_ids[0][step]  # the lens's top-1 is the greedy token


def test_hooks_are_removed_after_an_exception(tiny_models, monkeypatch):
    model = tiny_models["llama"]
    calls = []

    def failing_run(inputs, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # fail inside the second (cached) decode step, hooks registered
            raise RuntimeError("boom")
        return type(model).run(model, inputs, **kwargs)

    monkeypatch.setattr(model, "run", failing_run)
    with pytest.raises(RuntimeError, match="boom"):
        genlens.generation(model, PROMPTS[0], max_new_tokens=4)
    with pytest.raises(RuntimeError, match="boom"):
        calls[:] = [1]
        genlens.positions(model, PROMPTS[0])
    assert all(not block._forward_hooks for block in model.adapter.blocks)


def test_positions_rows_and_language_share(tiny_models):
    model = tiny_models["gemma3_text"]
    sets = sets_for(model)
    rows = genlens.positions(model, PROMPTS[0], sets, k=2)
    n = len(model.tokenizer(PROMPTS[0])["input_ids"])
    assert len(rows) == n * model.n_layers * 2
    assert rows["in_en"].tolist() == [t in sets["en"] for t in rows["token_id"]]
    share = genlens.language_share(rows)
    top = rows[rows["rank"] == 1]
    assert share.loc[0, "en"] == pytest.approx(top[top["layer"] == 0]["in_en"].mean())
    assert abs(share.filter(like="script_").sum(axis=1) - 1).max() < 1e-12


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("▁flower", "Latin"),
        (" облако", "Cyrillic"),
        ("花", "Han"),
        ("ひらがな", "Hiragana"),
        ("カタカナ", "Katakana"),
        ("漢字かな", "Han+Hiragana"),
        ("한국어", "Hangul"),
        ("हिन्दी", "Devanagari"),
        ("مرحبا", "Arabic"),
        ("λόγος", "Greek"),
        (' "', "Common"),
        ("12.", "Common"),
        ("\ufffd", "Byte"),
        ("éa", "Latin"),
    ],
)
def test_script_tags_fixed_strings(text, expected):
    assert tagging.script(text) == expected


def test_language_tags_and_concepts_in_a_prompt(spm_tokenizer):
    assert tagging.concepts_in(PROMPTS[0], ["en", "fr", "zh"]) == ["cloud", "flower"]  # in word-file order
    assert tagging.concepts_in("Un nuageux", ["fr"]) == []  # whole words only
    sets = tagging.word_sets(spm_tokenizer, ["cloud"], ["en", "zh"])
    assert sets["en"] == token_set(spm_tokenizer, "cloud") and sets["zh"] == token_set(spm_tokenizer, "云")
    with pytest.raises(DataError, match="unknown concept\\(s\\) 'clowd'"):
        tagging.word_sets(spm_tokenizer, ["cloud", "clowd"], ["en"])
    tags = tagging.lang_tags([sets["en"][0], sets["zh"][0], 10**6], sets)
    assert tags == ["en", "zh", ""]


def test_lens_generate_command(tiny_models, monkeypatch, tmp_path, capsys):
    from llmlatent import cli

    model = tiny_models["gemma3_text"]
    loads = []
    monkeypatch.setattr(cli, "load_model", lambda args: loads.append(1) or model)
    out = tmp_path / "gen.csv"
    argv = ["lens", PROMPTS[0], "--generate", "3", "-k", "2", "--out", str(out), "--colour", "p_zh"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("generated: ")
    rows = pd.read_csv(out)
    assert set(rows["step"]) <= {0, 1, 2} and rows["rank"].max() == 2
    assert {"p_en", "p_zh", "in_en", "lang_tags", "script"} <= set(rows.columns)
    assert (tmp_path / "gen.png").stat().st_size > 0 and (tmp_path / "gen.pdf").stat().st_size > 0
    assert cli.main([*argv[:-1], "p_xx"]) == 2 and len(loads) == 1  # refused before the model loads
    assert "--colour must be probability or p_<lang>" in capsys.readouterr().err
    assert cli.main([*argv, "--concepts", "cloud,clowd"]) == 2 and len(loads) == 1
    assert "unknown concept(s) 'clowd'" in capsys.readouterr().err


def test_generation_heatmap_draws_dollar_signs_as_text(tmp_path):
    import matplotlib.pyplot as plt

    from llmlatent.experiments.figures import generation as genplots
    from llmlatent.experiments.figures import plots

    rows = pd.DataFrame({"prompt_id": 0, "rank": 1, "layer": [0, 1, 0, 1], "step": [0, 0, 1, 1],
                         "token": ["$", "$$\\", "a", "b"], "generated_token": ["$$", "$$", "$x", "$x"],
                         "probability": [0.1, 0.9, 0.5, 0.5], "p_en": 0.0})  # fmt: skip
    fig = genplots.generation_heatmap(rows, title="costs $5")
    paths = plots.save(fig, tmp_path / "dollars")
    plt.close(fig)
    assert all(p.stat().st_size > 0 for p in paths)
    with pytest.raises(UsageError, match="choose probability or one of"):
        genplots.generation_heatmap(rows, colour="p_xx")


@pytest.mark.embedded
def test_embedded_generation_lens_is_exact_under_the_cache(embedded):
    """On the 270M default (sliding-window layers, 262k vocabulary): cached steps = one full forward."""
    concepts = ["cloud", "flower"]
    gen = genlens.words_generation(embedded, PROMPTS[0], ["en", "zh"], concepts=concepts, max_new_tokens=3, k=2)
    prompt_ids = embedded.tokenizer(PROMPTS[0])["input_ids"]
    sets = tagging.word_sets(embedded.tokenizer, concepts, ["en", "zh"])
    full = genlens.positions(embedded, prompt_ids + gen.token_ids[0], sets, k=2)
    steps = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(gen.token_ids[0]))
    full = full[full["position"].isin(steps)].reset_index(drop=True)
    # 262k-token sums: float32 rounding reaches ~2e-5 bits; 18 sliding-window layers cached vs in one forward move a
    # probability by up to 2.4e-5 on an AMD EPYC (float32 summation order of its kernels; < 1e-5 elsewhere)
    assert_same(gen.rows, full, entropy_bits=1e-4, probability=5e-5)
    last = gen.rows[(gen.rows["layer"] == embedded.n_layers - 1) & (gen.rows["rank"] == 1)]
    assert last["token_id"].tolist() == gen.token_ids[0]


def test_generation_keeps_tokens_through_the_first_end_of_sequence():
    assert genlens._until_eos([5, 1, 7, 1], 1) == [5, 1]
    assert genlens._until_eos([5, 7], 1) == [5, 7] and genlens._until_eos([5, 1], None) == [5, 1]
