"""The logit lens is exact: last layer = model output, independent of batching/padding, equal to a slow path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES

from llmlatent import capture, lens
from llmlatent.decode import decode as decode_stats

PROMPTS = [
    'Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "',
    'English: "book" - Deutsch: "',
    'Русский: "облако" - 中文: "云"\nРусский: "гора" - 中文: "山"\nРусский: "сумка" - 中文: "',
    "A cloud",
]


def own_next_token_probs(model, prompt: str) -> torch.Tensor:
    """The model's own next-token distribution: a plain unpadded forward, no llmlatent code."""
    enc = model.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model.hf(**enc).logits[0, -1]
    return logits.float().softmax(-1)


def slow_lens_probs(model, prompt: str) -> torch.Tensor:
    """Independent path: hooks keep full block outputs, one prompt, final norm + head written out by hand."""
    outputs = []
    handles = [
        b.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
        for b in model.adapter.blocks
    ]
    enc = model.tokenizer(prompt, return_tensors="pt")
    try:
        with torch.no_grad():
            model.hf(**enc)
    finally:
        for h in handles:
            h.remove()
    cfg = model.hf.config
    family = cfg.model_type
    norm = model.unembedding.final_norm
    head = model.hf.get_output_embeddings().weight
    probs = []
    for out in outputs:
        x = out[0, -1].float()
        if family == "gpt2":
            x = F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)
        else:
            x = x * torch.rsqrt(x.pow(2).mean() + cfg.rms_norm_eps)
            x = x * ((1 + norm.weight) if family.startswith("gemma") else norm.weight)
        logits = x @ head.T
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        probs.append(logits.softmax(-1))
    return torch.stack(probs)


@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_equals_model_output(tiny_models, family):
    model = tiny_models[family]
    lp = lens.layer_logprobs(model, PROMPTS, batch_size=4)
    for i, prompt in enumerate(PROMPTS):
        diff = (lp[i, -1].exp() - own_next_token_probs(model, prompt)).abs().max().item()
        assert diff <= 1e-5, f"{family}: lens at last layer differs from the model by {diff}"


@pytest.mark.parametrize("family", FAMILIES)
def test_batching_and_padding_do_not_change_results(tiny_models, family):
    model = tiny_models[family]
    batched = lens.layer_logprobs(model, PROMPTS, batch_size=4).exp()
    for i, prompt in enumerate(PROMPTS):
        alone = lens.layer_logprobs(model, [prompt], batch_size=1).exp()[0]
        assert (batched[i] - alone).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_lens_matches_independent_slow_path(tiny_models, family):
    model = tiny_models[family]
    fast = lens.layer_logprobs(model, PROMPTS, batch_size=3).exp()
    for i, prompt in enumerate(PROMPTS):
        slow = slow_lens_probs(model, prompt)
        assert slow.shape == fast[i].shape
        assert (fast[i] - slow).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_last_entry_is_normalised(tiny_models, family):
    """The adapter knows hidden_states[-1] is already normalised; block outputs are raw elsewhere."""
    model = tiny_models[family]
    enc = model.tokenizer(PROMPTS[0], return_tensors="pt")
    latents, _ = capture.forward_last(model, [PROMPTS[0]])
    with torch.no_grad():
        hs = model.hf(**enc, output_hidden_states=True).hidden_states
    assert len(hs) == model.n_layers + 1
    for layer in range(model.n_layers - 1):
        assert torch.allclose(hs[layer + 1][0, -1], latents[0, layer], atol=1e-5)
    normed = model.unembedding.final_norm(latents[0, -1])
    assert model.adapter.last_hidden_normalised
    assert torch.allclose(hs[-1][0, -1], normed, atol=1e-5)
    assert not torch.allclose(hs[-1][0, -1], latents[0, -1], atol=1e-3)


def test_gemma2_softcap_is_applied(tiny_models):
    model = tiny_models["gemma2"]
    assert model.unembedding.softcap == 5.0
    latents, logits = capture.forward_last(model, PROMPTS[:1])
    raw = model.unembedding.head(model.unembedding.final_norm(latents[0, -1]))
    assert raw.abs().max() > 5.0  # the cap bites
    assert torch.allclose(model.unembedding(latents[0, -1]), logits[0], atol=1e-5)


def test_decode_set_probabilities_and_entropy(tiny_models):
    model = tiny_models["llama"]
    latents, _ = capture.forward_last(model, PROMPTS[:2])
    rows = latents.reshape(-1, latents.shape[-1])
    n = rows.shape[0]
    sets = {"target": [[5, 9, 11]] * n, "source": [None] * n}
    stats = decode_stats(model.unembedding, rows, sets, k=3)
    # float64 reference: a float32 softmax over 262k tokens is itself off by ~3e-4 bits of entropy
    p = model.unembedding(rows).double().softmax(-1)
    assert torch.allclose(stats["p_target"], p[:, [5, 9, 11]].sum(-1), atol=1e-6)
    assert all(math.isnan(v) for v in stats["p_source"].tolist())
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1) / math.log(2)
    assert torch.allclose(stats["entropy"].double(), entropy, atol=1e-4)
    assert torch.equal(stats["top_ids"], p.topk(3).indices)


def test_top_tokens_table(tiny_models):
    model = tiny_models["qwen2"]
    table = lens.top_tokens(model, PROMPTS[0], k=4)
    assert list(table.columns) == ["layer", "rank", "token_id", "token", "prob"]
    assert len(table) == model.n_layers * 4
    for _, group in table.groupby("layer"):
        assert group["prob"].is_monotonic_decreasing
    wide = lens.top_tokens_wide(table)
    assert wide.shape == (model.n_layers, 4)


def test_empty_prompt_is_rejected(tiny_models):
    with pytest.raises(ValueError, match="empty prompt"):
        lens.layer_logprobs(tiny_models["llama"], ["  "])
