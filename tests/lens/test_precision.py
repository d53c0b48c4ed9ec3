"""Lens probabilities in float32 on a bf16 model: float32 hidden states through a float32 copy of the final norm and
head, checked against a float64 reference (and the bf16 path it replaces is measurably worse)."""

from __future__ import annotations

import pytest
import torch

from llmlatent.lens import decode
from llmlatent.model import from_hf


class _Tok:  # the lens needs no tokenizer here
    pad_token = eos_token = "</s>"
    padding_side = "left"


@pytest.fixture(scope="module")
def bf16_unembedding():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=3000,
        hidden_size=256,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    hf = LlamaForCausalLM(config)
    with torch.no_grad():
        hf.lm_head.weight.mul_(5.0)
        hf.model.norm.weight.uniform_(0.5, 1.5)
    hf = hf.to(torch.bfloat16)
    return from_hf(hf, _Tok(), name="tiny-bf16").unembedding, config.rms_norm_eps


def reference(unembedding, h: torch.Tensor, eps: float) -> torch.Tensor:
    """float64 log-probabilities: RMSNorm and head by hand in float64 from the bf16 weights."""
    x = h.double()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * unembedding.final_norm.weight.double()
    return torch.log_softmax(x @ unembedding.head.weight.double().T, dim=-1)


def test_lens_logits_are_float32_end_to_end(bf16_unembedding):
    unembedding, eps = bf16_unembedding
    torch.manual_seed(1)
    h = (torch.randn(6, 256) * 4).to(torch.bfloat16)  # block outputs of a bf16 model
    ref = reference(unembedding, h, eps)
    logits = unembedding(h)
    assert logits.dtype == torch.float32
    ours = torch.log_softmax(logits.double(), -1)
    err = (ours.exp() - ref.exp()).abs().max().item()
    assert err < 1e-6
    # the bf16 path this replaces: norm and head in bf16
    old = torch.log_softmax(unembedding.head(unembedding.final_norm(h)).double(), -1)
    assert (old.exp() - ref.exp()).abs().max().item() > 100 * err

    sets = {"target": [[5, 17, 2999]] * 3 + [[0, 1, 2]] * 3}
    got = decode.decode(unembedding, h, sets, k=3, energy=False)
    want = ref[torch.arange(6)[:, None], torch.tensor(sets["target"])].exp().sum(-1)
    torch.testing.assert_close(got["p_target"].double(), want, rtol=1e-5, atol=1e-9)
    entropy = -(ref.exp() * ref).sum(-1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(got["entropy"].double(), entropy, rtol=1e-5, atol=1e-6)
    assert torch.equal(got["top_ids"], ref.topk(3, dim=-1).indices)


def test_float32_copy_is_made_once_and_follows_the_weights(bf16_unembedding):
    unembedding, _ = bf16_unembedding
    first = unembedding.float32()
    assert first.weight.dtype == torch.float32 and unembedding.head.weight.dtype == torch.bfloat16
    assert unembedding.float32() is first  # cached
    with torch.no_grad():
        unembedding.head.weight[0] += 1  # an in-place change bumps the version counter
    second = unembedding.float32()
    assert second is not first and torch.equal(second.weight[0], unembedding.head.weight[0].float())
