"""On the embedded default (google/gemma-3-270m from the PyPI GGUF): loads offline, lens is exact."""

from __future__ import annotations

import os
import time

import pytest
import torch

from llmlatent import lens, model

pytestmark = pytest.mark.embedded
PROMPT = 'Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "'


def test_loads_offline_and_second_load_is_fast(embedded):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert (model.default_model_path() / "model.safetensors").exists()
    started = time.perf_counter()
    again = model.load()
    seconds = time.perf_counter() - started
    print(f"\nsecond load of the embedded default: {seconds:.1f} s")
    assert again.n_layers == 18 and again.hidden_size == 640
    assert again.hf.dtype == torch.float32


def test_lens_on_french_chinese_prompt(embedded):
    lp = lens.layer_logprobs(embedded, [PROMPT])
    assert lp.shape == (1, 18, 262144)
    enc = embedded.tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        own = embedded.hf(**enc).logits[0, -1].float().softmax(-1)
    assert (lp[0, -1].exp() - own).abs().max().item() <= 1e-5
    table = lens.top_tokens(embedded, PROMPT, k=5)
    assert table["layer"].nunique() == 18
