"""Lens at the last few positions of one prompt: shape, last position = top_tokens, heatmap draws."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from llmlatent import capture
from llmlatent.experiments.figures import plots
from llmlatent.lens import last_token as lens
from llmlatent.lens.decode import decode  # noqa: E402

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
    """Causality: position t of the full prompt reads the same residual as the last token of the prompt cut after t.

    The cut prompt is given as token ids (not re-tokenized text), so the check always runs.
    """
    model = tiny_models["llama"]
    table = lens.top_tokens_positions(model, PROMPT, positions=3)
    ids = model.encode([PROMPT])["input_ids"][:, :-1]  # the full prompt's tokens, last one cut
    n_tokens = ids.shape[1] + 1
    with torch.inference_mode(), capture.capture_last(model, torch.tensor([ids.shape[1] - 1])) as captured:
        model.run({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, logits_to_keep=1, use_cache=False)
    expected = decode(model.unembedding, torch.cat(captured), k=1, energy=False)["top_ids"][:, 0]
    earlier = table[table["position"] == n_tokens - 2].sort_values("layer")
    assert len(earlier) == model.n_layers
    assert earlier["token_id"].tolist() == expected.tolist()


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
