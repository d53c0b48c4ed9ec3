"""Lens at the last few positions of one prompt: shape, last position = top_tokens, heatmap draws."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from llmlatent import lens, plots  # noqa: E402

PROMPT = 'Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "'


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
def test_last_position_equals_top_tokens(tiny_models, family):
    model = tiny_models[family]
    table = lens.top_tokens_positions(model, PROMPT, positions=4, k=3)
    n_tokens = len(model.tokenizer(PROMPT)["input_ids"])
    assert len(table) == model.n_layers * 4 * 3
    assert sorted(table["position"].unique()) == list(range(n_tokens - 4, n_tokens))
    last = table[table["position"] == n_tokens - 1].reset_index(drop=True)
    expected = lens.top_tokens(model, PROMPT, k=3)
    pd.testing.assert_frame_equal(
        last[["layer", "rank", "token_id", "top_token"]].rename(columns={"top_token": "token"}),
        expected[["layer", "rank", "token_id", "token"]],
    )
    assert abs(last["prob"].to_numpy() - expected["prob"].to_numpy()).max() <= 1e-5
    ids = model.tokenizer(PROMPT)["input_ids"]
    assert table.drop_duplicates("position")["input_token"].tolist() == [model.tokenizer.decode([i]) for i in ids[-4:]]


def test_earlier_position_is_the_lens_of_the_truncated_prompt(tiny_models):
    """Causality: position t of the full prompt reads the same residual as the last token of the prompt cut after t."""
    model = tiny_models["llama"]
    table = lens.top_tokens_positions(model, PROMPT, positions=3)
    ids = model.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    n_tokens = len(model.tokenizer(PROMPT)["input_ids"])
    prefix = model.tokenizer.decode(ids[:-1])
    if len(model.tokenizer(prefix)["input_ids"]) != n_tokens - 1:
        pytest.skip("the prefix does not re-tokenize to the same tokens")
    earlier = table[table["position"] == n_tokens - 2].reset_index(drop=True)
    expected = lens.top_tokens(model, prefix, k=1)
    assert earlier["token_id"].tolist() == expected["token_id"].tolist()


def test_positions_larger_than_prompt_and_heatmap(tiny_models):
    model = tiny_models["qwen2"]
    table = lens.top_tokens_positions(model, "A cloud", positions=50)
    n_tokens = len(model.tokenizer("A cloud")["input_ids"])
    assert table["position"].nunique() == n_tokens
    assert set(table["rank"]) == {1}
    fig = plots.position_heatmap(table, title="tiny")
    assert len(fig.axes[0].texts) == model.n_layers * n_tokens
    plt.close(fig)
    with pytest.raises(ValueError):
        lens.top_tokens_positions(model, "A cloud", positions=0)
