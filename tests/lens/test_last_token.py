"""The logit lens is exact: last layer = model output, independent of batching/padding, equal to a slow path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES

from llmlatent import capture
from llmlatent.lens import last_token as lens
from llmlatent.lens.decode import decode as decode_stats

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


# ---------------------------------------------------------------- the Lens seam


def old_sweep(model, ps):
    """Today's sweep path written out: every batch's latents decoded with the Unembedding itself, no Lens."""
    import numpy as np
    import pandas as pd

    frame, parts, order = ps.df, [], []
    for idx in capture.length_batches(model, frame["prompt"].tolist(), 16):
        latents, _ = capture.forward_last(model, frame["prompt"].iloc[idx].tolist())
        rows = frame.iloc[idx]
        stats = decode_stats(
            model.unembedding, latents.reshape(-1, latents.shape[-1]), lens.row_sets(rows, model.n_layers)
        )
        parts.append(lens.stats_frame(rows["prompt_id"].tolist(), model.n_layers, stats, model.tokenizer))
        order += idx
    out = pd.concat(parts, ignore_index=True)
    return out.iloc[np.argsort(np.repeat(order, model.n_layers), kind="stable")].reset_index(drop=True)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_default_lens_is_bit_identical_to_the_unembedding_path(tiny_models, family):
    import pandas as pd

    from llmlatent import tasks
    from llmlatent.lens.base import LogitLens, of

    model = tiny_models[family]
    assert model.lens is None  # the model does not build its lens: lens.of(model) does
    assert isinstance(of(model), LogitLens) and of(model).unembedding is model.unembedding
    ps = tasks.build("translation", "fr", "zh", model.tokenizer, n=6)
    pd.testing.assert_frame_equal(lens.sweep(model, ps, progress=False), old_sweep(model, ps), check_exact=True)
    latents, _ = capture.forward_last(model, PROMPTS)
    rows = latents.reshape(-1, latents.shape[-1])
    sets = {"target": [[3, 5]] * len(rows)}
    new, old = (
        decode_stats(of(model), rows, sets, layers=torch.arange(3).repeat(4)),
        decode_stats(model.unembedding, rows, sets),
    )
    assert new.keys() == old.keys() and all(torch.equal(new[key], old[key]) for key in old)
    direct = torch.empty(len(PROMPTS), model.n_layers, model.unembedding.vocab_size)
    for idx in capture.length_batches(model, PROMPTS, 8):  # today's layer_logprobs: the head on each batch
        batch, _ = capture.forward_last(model, [PROMPTS[i] for i in idx])
        with torch.inference_mode():
            direct[idx] = torch.log_softmax(model.unembedding(batch), dim=-1)
    assert torch.equal(lens.layer_logprobs(model, PROMPTS), direct)


class Scaled:
    """A stand-in for a tuned lens: block ``layer``'s residual is scaled by ``layer + 2`` before the shared head."""

    @staticmethod
    def make(unembedding):
        from llmlatent.lens.base import Lens

        class ScaledLens(Lens):
            def transform(self, hidden, layer):
                return hidden * (layer + 2)

        return ScaledLens(unembedding)


def test_a_learned_lens_plugs_in_without_touching_callers(tiny_models):
    import dataclasses

    from llmlatent.errors import UsageError
    from llmlatent.lens.base import of

    base = tiny_models["llama"]
    model = dataclasses.replace(base, lens=Scaled.make(base.unembedding))
    latents, _ = capture.forward_last(model, PROMPTS)  # [4 prompts, 3 layers, hidden]
    rows, layers = latents.reshape(-1, latents.shape[-1]), torch.arange(3).repeat(4)
    got = decode_stats(of(model), rows, layers=layers)
    want = decode_stats(base.unembedding, rows * (layers[:, None] + 2).float())
    assert all(torch.equal(got[key], want[key]) for key in want)
    table = lens.top_tokens(model, PROMPTS[0], k=2)
    scaled = decode_stats(base.unembedding, latents[0] * torch.tensor([2.0, 3.0, 4.0])[:, None], k=2, energy=False)
    assert table["token_id"].tolist() == scaled["top_ids"].reshape(-1).tolist()
    assert not torch.equal(lens.layer_logprobs(model, PROMPTS[:1]), lens.layer_logprobs(base, PROMPTS[:1]))
    with pytest.raises(UsageError, match="pass layers="):
        decode_stats(of(model), rows)  # a per-layer lens needs each row's block
    with pytest.raises(UsageError, match=r"^model.lens is a str, not a llmlatent.lens.Lens"):
        lens.top_tokens(dataclasses.replace(base, lens="tuned"), PROMPTS[0])
