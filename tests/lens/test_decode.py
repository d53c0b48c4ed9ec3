"""The streamed decode (vocabulary slices, online log-sum-exp) equals a full float64 softmax."""

from __future__ import annotations

import math

import pytest
import torch

from llmlatent import capture
from llmlatent.adapter import Unembedding
from llmlatent.lens import decode as decode_module
from llmlatent.lens import last_token as lens


def reference(unembedding: Unembedding, rows: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return unembedding(rows).double().softmax(-1)


def check(stats: dict, p: torch.Tensor, target: list[int], k: int) -> None:
    assert torch.allclose(stats["p_target"], p[:, target].sum(-1), atol=1e-6)
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1) / math.log(2)
    assert torch.allclose(stats["entropy"].double(), entropy, atol=1e-4)
    top = p.topk(k)
    assert torch.equal(stats["top_ids"], top.indices)
    assert torch.allclose(stats["top_probs"].double(), top.values, atol=1e-6)


def force_slices(monkeypatch, width: int) -> None:
    """Force ``width``-token vocabulary slices for decodes of at least 8 rows (else one slice or a few wide ones)."""
    monkeypatch.setattr(decode_module, "_MIN_SLICE", width)
    monkeypatch.setattr(decode_module, "DECODE_BYTES", 4 * width * 8)


@pytest.fixture
def many_slices(monkeypatch):
    """Force 32-token vocabulary slices (a 300- or 600-token vocabulary is otherwise one slice)."""
    force_slices(monkeypatch, 32)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
@pytest.mark.parametrize("k", [1, 3])
def test_sliced_decode_equals_full_softmax(tiny_models, monkeypatch, family, k):
    model = tiny_models[family]
    vocab = model.unembedding.vocab_size
    # 32-token slices on the 600-token BPE vocabulary (19 slices); on the 262,144-token SentencePiece one, 32-token
    # slices would mean 8,192 Python-level steps per decode (minutes) for no extra coverage: there, 9 slices
    width = 32 if vocab <= 1024 else vocab // 8 - 5  # not a divisor: the last slice is a short one
    force_slices(monkeypatch, width)
    latents, _ = capture.forward_last(model, ['Français: "nuage" - 中文: "', "A cloud", "Ein"])
    rows = latents.reshape(-1, latents.shape[-1])
    assert rows.shape[0] >= 8  # so that the forced width applies
    target = sorted({5, 40, 77, width + 3, 2 * width + 7, vocab - 1})  # ids in different slices, incl. the last
    stats = decode_module.decode(model.unembedding, rows, {"target": [target] * rows.shape[0]}, k=k)
    check(stats, reference(model.unembedding, rows), target, k)


@pytest.mark.parametrize("k", [1, 2])
def test_sliced_decode_with_head_bias(many_slices, k):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=True)
    torch.nn.init.normal_(head.bias, std=3.0)  # large enough to move the argmax
    unembedding = Unembedding(torch.nn.LayerNorm(16), head)
    rows = torch.randn(7, 16) * 4
    stats = decode_module.decode(unembedding, rows, {"target": [[1, 150, 299]] * 7}, k=k, energy=False)
    check(stats, reference(unembedding, rows), [1, 150, 299], k)


def test_unsliceable_head_is_decoded_whole(tiny_models):
    """A head that is not a plain Linear (e.g. quantised or wrapped) falls back to whole rows."""

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: torch.nn.Linear) -> None:
            super().__init__()
            self.inner = inner
            self.weight = inner.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    base = tiny_models["qwen2"].unembedding
    wrapped = Unembedding(base.final_norm, Wrapped(base.head), base.softcap)
    assert not decode_module._sliceable(wrapped.head)
    rows = torch.randn(5, base.weight.shape[1]) * 3
    stats = decode_module.decode(wrapped, rows, {"target": [[3, 4]] * 5}, k=2, energy=False)
    check(stats, reference(base, rows), [3, 4], 2)


def test_sweep_is_independent_of_decode_grouping(tiny_models, spm_tokenizer, monkeypatch):
    """The sweep decodes ~DECODE_ROWS rows at a time across batches; the grouping must not change rows or order."""
    from llmlatent import tasks

    model = tiny_models["mistral"]
    prompts = tasks.build("translation", "de", "zh", spm_tokenizer, n=10, seed=3)
    grouped = lens.sweep(model, prompts, batch_size=3, progress=False)
    monkeypatch.setattr(lens, "DECODE_ROWS", 1)  # decode after every batch
    each = lens.sweep(model, prompts, batch_size=3, progress=False)
    assert (
        grouped["prompt_id"].tolist()
        == each["prompt_id"].tolist()
        == [pid for pid in prompts.df["prompt_id"] for _ in range(model.n_layers)]
    )
    cols = ["p_target", "p_english", "entropy", "energy"]
    assert (grouped[cols] - each[cols]).abs().max().max() <= 1e-5
    assert grouped["top_token"].tolist() == each["top_token"].tolist()
