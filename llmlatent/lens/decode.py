"""Streamed unembedding statistics: entropy, top-k and token-set probabilities of many residual rows.

All rows are unembedded together, one vocabulary slice at a time, with an online log-sum-exp, so no
full-vocabulary tensor exists for all rows at once (the sweep's hot path; see :func:`decode`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import torch
from torch import nn

from llmlatent.adapter import Unembedding
from llmlatent.lens.base import Lens, of
from llmlatent.metrics import LOG2, token_energy

# float32 logits decoded at once: all rows' logits over one slice of the vocabulary, sized to stay in
# the CPU's last-level cache while max/exp/sum/dot run over it (and bounding peak memory); on
# accelerators larger slices (fewer kernel launches)
DECODE_BYTES = 8 * 2**20
DECODE_BYTES_ACCELERATOR = 256 * 2**20
_MIN_SLICE = 1024  # narrowest vocabulary slice (very many rows are decoded in row blocks instead)
# PyTorch's CPU exp() takes a ~10x slower path for float32 arguments below about -87.3 (results
# underflow); terms that small weigh < 1e-37 of a row's largest one, so arguments are clamped here.
_EXP_FLOOR = -87.0


def _pad_sets(sets: Sequence[Sequence[int] | None], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (ids [rows, width] zero-padded, valid mask) of one token-id set per row (None or empty: no ids)."""
    lengths = np.fromiter((len(s) if s is not None else 0 for s in sets), dtype=np.int64, count=len(sets))
    width = max(1, int(lengths.max(initial=0)))
    valid = np.arange(width)[None, :] < lengths[:, None]
    ids = np.zeros((len(sets), width), dtype=np.int64)
    ids[valid] = np.fromiter((t for s in sets if s is not None for t in s), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids).to(device), torch.from_numpy(valid).to(device)


def _sliceable(head: torch.nn.Module) -> bool:
    """Return True when the head is a plain Linear whose weight rows can be sliced (not offloaded or quantised)."""
    weight = getattr(head, "weight", None)
    return (
        type(head).forward is torch.nn.Linear.forward
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.is_floating_point()
        and weight.device.type != "meta"
        and not hasattr(head, "_hf_hook")
    )


def _decode_block(
    unembedding: Unembedding,
    h: torch.Tensor,
    sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
    k: int,
    sliced: bool,
) -> dict[str, torch.Tensor]:
    """Return entropy, top-k and set probabilities of rows ``h``, streaming over vocabulary slices.

    One matmul per slice gives all rows' logits over that slice, laid out [slice, rows] (``W_slice @
    xᵀ``: the faster GEMM layout on CPU, and reductions over the vocabulary then run along
    contiguous rows); an online log-sum-exp keeps, per row, the running max m, s = Σ exp(z − m) and
    t = Σ exp(z − m)·(z − m) in float64, so that log-partition = m + log s and entropy = log s − t/s,
    without any full-vocabulary tensor. Set probabilities come from the set members' logits,
    gathered from their slice.
    """
    head, softcap = unembedding.head, unembedding.softcap
    # float32 hidden states through a float32 copy of the final norm and head (Unembedding.float32):
    # logits and probabilities are float32 even on bf16 models; a head that cannot be copied runs as is
    parts = unembedding.float32()
    # torch types a Module's attributes Tensor | Module: the head's weight is a tensor
    weight, bias = (
        (parts.weight, parts.bias)
        if parts is not None
        else (cast(torch.Tensor, head.weight), getattr(head, "bias", None))
    )
    x = unembedding.normed(h)
    n, vocab = x.shape[0], unembedding.vocab_size
    budget = DECODE_BYTES if x.device.type == "cpu" else DECODE_BYTES_ACCELERATOR
    width = min(vocab, max(_MIN_SLICE, budget // (4 * n))) if sliced else vocab
    x_t = x.T.contiguous()
    z_buf = torch.empty(n * width if sliced else 0, dtype=torch.float32, device=x.device)
    e_buf = torch.empty(n * width, dtype=torch.float32, device=x.device)
    bias = bias if sliced else None
    set_ids = {name: ids.T for name, (ids, _) in sets.items()}  # [set width, rows]
    set_logits = {name: torch.zeros(ids.shape, dtype=torch.float32, device=x.device) for name, ids in set_ids.items()}
    shift = total = weighted = top_v = top_i = None
    for v0 in range(0, vocab, width):
        if not sliced:
            z = (
                (
                    head(x.to(cast(torch.Tensor, head.weight).dtype))
                    if parts is None
                    else nn.functional.linear(x, weight, parts.bias)
                )
                .float()
                .T
            )
        else:
            w = weight[v0 : v0 + width]
            if w.dtype == torch.float32 and bias is None:
                z = torch.matmul(w, x_t, out=z_buf[: n * w.shape[0]].view(w.shape[0], n))
            else:
                z = torch.matmul(w, x_t)
                if bias is not None:
                    z = z + bias[v0 : v0 + width, None]
                z = z.float()
        if softcap:
            z.div_(softcap).tanh_().mul_(softcap)
        cols = z.shape[0]
        for name, ids in set_ids.items():
            local = ids - v0
            inside = (local >= 0) & (local < cols)
            set_logits[name] = torch.where(inside, z.gather(0, local.clamp(0, cols - 1)), set_logits[name])
        if k == 1 and width < vocab:  # amax is ~10x faster than max-with-indices; argmax found after the loop
            vals = z.amax(0, keepdim=True)
            if top_v is None:
                top_v, top_i = vals, torch.zeros_like(vals, dtype=torch.int64)
            else:
                better = vals > top_v
                assert top_i is not None  # set together with top_v
                top_v, top_i = torch.where(better, vals, top_v), torch.where(better, v0, top_i)
        else:
            vals, idx = z.topk(min(k, cols), dim=0)
            idx = idx + v0
            if top_v is None:
                top_v, top_i = vals, idx
            else:
                assert top_i is not None  # set together with top_v
                both_v, both_i = torch.cat([top_v, vals]), torch.cat([top_i, idx])
                top_v, order = both_v.topk(min(k, both_v.shape[0]), dim=0)
                top_i = both_i.gather(0, order)
        z.sub_(vals[:1]).clamp_min_(_EXP_FLOOR)
        e = torch.exp(z, out=e_buf[: z.numel()].view(z.shape))
        s = e.sum(0).double()
        t = e.mul_(z).sum(0).double()  # Σ e·(z − m) ≤ 0 (same-sign terms: torch's pairwise sum is accurate; bmm is not)
        m = vals[0].double()
        if shift is None:
            shift, total, weighted = m, s, t
        else:
            assert total is not None and weighted is not None  # set together with shift
            new = torch.maximum(shift, m)
            a, b = torch.exp(shift - new), torch.exp(m - new)
            weighted = a * (weighted + total * (shift - new)) + b * (t + s * (m - new))
            total = a * total + b * s
            shift = new
    # the vocabulary has at least one slice, so the loop above set them all
    assert shift is not None and total is not None and weighted is not None
    assert top_v is not None and top_i is not None
    if k == 1 and width < vocab:  # top_i holds each row's best slice: its argmax, recomputed for those rows only
        top_i = top_i[0]
        for v0 in top_i.unique().tolist():
            rows = (top_i == v0).nonzero()[:, 0]
            w = weight[v0 : v0 + width]
            z = torch.matmul(w, x_t[:, rows])
            if bias is not None:
                z = z + bias[v0 : v0 + width, None]
            top_i[rows] = z.argmax(0) + v0  # (soft-capping is monotonic: the argmax is the same)
        top_i = top_i[None]
    log_total = total.log()
    lse = shift + log_total
    out = {
        "entropy": ((log_total - weighted / total) / LOG2).float(),
        "top_ids": top_i.T,
        "top_probs": (top_v.double() - lse).exp().float().T,
    }
    for name, (_, valid) in sets.items():
        out[f"p_{name}"] = ((set_logits[name].double() - lse).exp().T * valid).sum(-1)
    return out


@torch.inference_mode()
def decode(
    lens: Lens | Unembedding,
    latents: torch.Tensor,
    sets: Mapping[str, Sequence[Sequence[int] | None]] | None = None,
    *,
    k: int = 1,
    energy: bool = True,
    layers: torch.Tensor | Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Return per-row lens statistics for raw residual vectors ``latents`` [N, hidden].

    ``lens`` is a :class:`llmlatent.lens.base.Lens` or anything :func:`llmlatent.lens.base.of` reads (an
    Unembedding = its logit lens); ``layers`` [N]
    names the block of every row, needed by lenses that translate per layer (the logit lens ignores it).

    Keys: ``entropy`` (bits), ``top_ids``/``top_probs`` [N, k], ``energy`` (see
    :func:`llmlatent.metrics.token_energy`) and, for every named token-id set list in ``sets``
    (one set per row, None = undefined), ``p_<name>``: the probability mass on that set (NaN where
    undefined). All rows are unembedded together, one vocabulary slice at a time, so that at most
    ``DECODE_BYTES`` of logits exist at once (heads that cannot be sliced: whole rows, in row blocks).
    """
    sets = sets or {}
    lens = of(lens)
    unembedding = lens.unembedding
    device = cast(torch.Tensor, unembedding.head.weight).device  # a Module attribute: typed Tensor | Module
    # the lens's per-layer translation (the logit lens: the same tensor, untouched) before the shared head
    latents = lens.translate(latents, layers)
    n = latents.shape[0]
    sliced = _sliceable(unembedding.head)
    block = max(1, DECODE_BYTES // (4 * (_MIN_SLICE if sliced else unembedding.vocab_size)))
    padded = {name: _pad_sets(s, device) for name, s in sets.items()}
    undefined = {name: torch.tensor([s is None for s in ss]) for name, ss in sets.items()}
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows_sets = {name: (ids[start:stop], valid[start:stop]) for name, (ids, valid) in padded.items()}
        part = _decode_block(unembedding, latents[start:stop].to(device), rows_sets, k, sliced)
        parts.append({key: value.cpu() for key, value in part.items()})
    result = {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else {}
    for name, und in undefined.items():
        result[f"p_{name}"][und] = math.nan
    if energy:
        result["energy"] = token_energy(unembedding, latents.to(device)).cpu()
    return result
