"""The prompt-prefix KV cache: how many copies one forward tiles, one-token prompts, right padding."""

from __future__ import annotations

import pytest
import torch

from llmlatent.errors import UsageError
from llmlatent.prefix import Prefix

PROMPTS = ['Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "', "A cloud", "x"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_copies_per_forward_respects_rows_and_bytes(tiny_models):
    model = tiny_models["llama"]
    prefix = Prefix.of(model, PROMPTS)
    per_row = sum(layer.keys.nbytes + layer.values.nbytes for layer in prefix.cache.layers) // prefix.rows
    assert prefix.row_bytes == per_row > 0
    assert prefix.copies_per_forward(10, max_rows=256) == 10  # all wanted copies fit
    assert prefix.copies_per_forward(10, max_rows=7) == 2  # 2 copies × 3 rows ≤ 7 rows
    assert prefix.copies_per_forward(10, max_rows=2) == 1  # never fewer than one copy
    assert (
        prefix.copies_per_forward(10, max_rows=256, max_bytes=4 * per_row * prefix.rows) == 4
    )  # the cache budget binds


def test_one_token_prompts_and_no_cache_use_full_forwards(tiny_models):
    """Without a cache the last-token forward is the whole prompt, tiled; the final residual equals the cached path."""
    model = tiny_models["gemma3_text"]
    cached, plain = Prefix.of(model, PROMPTS), Prefix.of(model, PROMPTS, reuse=False)
    assert plain.cache is None and plain.row_bytes == 0
    assert torch.allclose(cached.final(3), plain.final(3), atol=1e-4, rtol=1e-4)
    one = Prefix(model, {k: v[:, -1:] for k, v in model.encode(["x", "y"]).items()})
    assert one.cache is None and one.final(2).shape == (4, model.hidden_size)


def test_right_padding_is_refused(tiny_models):
    model = tiny_models["llama"]
    inputs = model.encode(PROMPTS)
    flipped = {k: v.flip(1) for k, v in inputs.items()}  # padding now on the right
    with pytest.raises(UsageError, match="pad on the left"):
        Prefix(model, flipped)
