"""Batched last-token logit lens: decode the residual after every block at the last prompt token.

Only the last real position of each prompt is unembedded (all layers of a batch in a few chunked
matmuls); the model's own head runs with ``logits_to_keep=1``. Full-vocabulary logits are never
materialised for every position.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .adapter import Unembedding
from .metrics import LOG2
from .model import Model

log = logging.getLogger(__name__)

# float32 logits decoded at once: all rows' logits over one slice of the vocabulary, sized to stay in
# the CPU's last-level cache while max/exp/sum/dot run over it (and bounding peak memory)
DECODE_BYTES = 32 * 2**20
_MIN_SLICE = 1024  # narrowest vocabulary slice (very many rows are decoded in row blocks instead)
# PyTorch's CPU exp() takes a ~10x slower path for float32 arguments below about -87.3 (results
# underflow); terms that small weigh < 1e-37 of a row's largest one, so arguments are clamped here.
_EXP_FLOOR = -87.0


def block_output(output: object) -> torch.Tensor:
    """Return the hidden-state tensor of a block's forward output (tensor or tuple)."""
    return output[0] if isinstance(output, tuple) else output


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the index of the last real token of each row (left or right padding)."""
    t = attention_mask.shape[1]
    return t - 1 - attention_mask.flip(1).to(torch.int64).argmax(1)


@contextlib.contextmanager
def capture_last(model: Model, last: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    """Yield a list that fills, during one forward, with each block's output at rows' ``last`` index."""
    captured: list[torch.Tensor] = []
    rows = torch.arange(last.shape[0])

    def hook(_module: torch.nn.Module, _args: object, output: object) -> None:
        h = block_output(output)
        captured.append(h[rows.to(h.device), last.to(h.device)].detach())

    handles = [block.register_forward_hook(hook) for block in model.adapter.blocks]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def forward_last(model: Model, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (latents [B, layers, hidden] at the last real token, the model's own last-token logits [B, V])."""
    inputs = model.encode(list(prompts))
    last = last_positions(inputs["attention_mask"])
    with torch.inference_mode(), capture_last(model, last) as captured:
        try:
            out = model.hf(**inputs, logits_to_keep=1, use_cache=False)
        except TypeError:  # remote-code models without logits_to_keep
            out = model.hf(**inputs, use_cache=False)
    if not bool((last == inputs["input_ids"].shape[1] - 1).all()):
        raise RuntimeError("the tokenizer must pad on the left so that the last position is the last real token")
    logits = out.logits[:, -1]
    if len(captured) != model.n_layers:
        raise RuntimeError(f"captured {len(captured)} block outputs, expected {model.n_layers}")
    return torch.stack([c.to(captured[0].device) for c in captured], dim=1), logits.float()


def _pad_sets(sets: Sequence[Sequence[int] | None], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max([len(s) for s in sets if s is not None] + [1])
    ids = torch.zeros(len(sets), width, dtype=torch.int64)
    valid = torch.zeros(len(sets), width, dtype=torch.bool)
    for i, s in enumerate(sets):
        if s:
            ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
            valid[i, : len(s)] = True
    return ids.to(device), valid.to(device)


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

    One matmul per slice gives all rows' logits z over that slice; an online log-sum-exp keeps, per
    row, the running max m, s = Σ exp(z − m) and t = Σ exp(z − m)·(z − m) in float64, so that
    log-partition = m + log s and entropy = log s − t/s, without any full-vocabulary tensor.
    Set probabilities come from the set members' logits gathered from their slice.
    """
    head, softcap = unembedding.head, unembedding.softcap
    x = unembedding.final_norm(h.to(head.weight.dtype))
    n, vocab = x.shape[0], unembedding.vocab_size
    width = min(vocab, max(_MIN_SLICE, DECODE_BYTES // (4 * n))) if sliced else vocab
    z_buf = torch.empty(n * width if sliced else 0, dtype=torch.float32, device=x.device)
    e_buf = torch.empty(n * width, dtype=torch.float32, device=x.device)
    bias = getattr(head, "bias", None) if sliced else None
    set_logits = {name: torch.zeros(ids.shape, dtype=torch.float32, device=x.device) for name, (ids, _) in sets.items()}
    shift = total = weighted = top_v = top_i = None
    for v0 in range(0, vocab, width):
        if not sliced:
            z = head(x).float()
        else:
            w = head.weight[v0 : v0 + width]
            shape = (n, w.shape[0])
            if w.dtype == torch.float32 and bias is None:
                z = torch.matmul(x, w.T, out=z_buf[: n * w.shape[0]].view(shape))
            else:
                z = torch.nn.functional.linear(x, w, None if bias is None else bias[v0 : v0 + width]).float()
        if softcap:
            z.div_(softcap).tanh_().mul_(softcap)
        cols = z.shape[1]
        for name, (ids, _) in sets.items():
            local = ids - v0
            inside = (local >= 0) & (local < cols)
            set_logits[name] = torch.where(inside, z.gather(1, local.clamp(0, cols - 1)), set_logits[name])
        if k == 1:
            vals, idx = z.max(-1, keepdim=True)
        else:
            vals, idx = z.topk(min(k, cols), dim=-1)
        idx = idx + v0
        if top_v is None:
            top_v, top_i = vals, idx
        else:
            both_v, both_i = torch.cat([top_v, vals], 1), torch.cat([top_i, idx], 1)
            top_v, order = both_v.topk(min(k, both_v.shape[1]), dim=-1)
            top_i = both_i.gather(1, order)
        z.sub_(vals[:, :1]).clamp_min_(_EXP_FLOOR)
        e = torch.exp(z, out=e_buf[: z.numel()].view(z.shape))
        s = e.sum(-1).double()
        t = e.mul_(z).sum(-1).double()  # Σ e·(z − m) ≤ 0 (same-sign terms: torch's pairwise sum is accurate; bmm is not)
        m = vals[:, 0].double()
        if shift is None:
            shift, total, weighted = m, s, t
        else:
            new = torch.maximum(shift, m)
            a, b = torch.exp(shift - new), torch.exp(m - new)
            weighted = a * (weighted + total * (shift - new)) + b * (t + s * (m - new))
            total = a * total + b * s
            shift = new
    log_total = total.log()
    lse = (shift + log_total)[:, None]
    out = {
        "entropy": ((log_total - weighted / total) / LOG2).float(),
        "top_ids": top_i,
        "top_probs": (top_v.double() - lse).exp().float(),
    }
    for name, (_, valid) in sets.items():
        out[f"p_{name}"] = ((set_logits[name].double() - lse).exp() * valid).sum(-1)
    return out


@torch.inference_mode()
def decode(
    unembedding: Unembedding,
    latents: torch.Tensor,
    sets: dict[str, Sequence[Sequence[int] | None]] | None = None,
    *,
    k: int = 1,
    energy: bool = True,
) -> dict[str, torch.Tensor]:
    """Return per-row lens statistics for raw residual vectors ``latents`` [N, hidden].

    Keys: ``entropy`` (bits), ``top_ids``/``top_probs`` [N, k], ``energy`` (see
    :func:`llmlatent.metrics.token_energy`) and, for every named token-id set list in ``sets``
    (one set per row, None = undefined), ``p_<name>``: the probability mass on that set (NaN where
    undefined). All rows are unembedded together, one vocabulary slice at a time, so that at most
    ``DECODE_BYTES`` of logits exist at once (heads that cannot be sliced: whole rows, in row blocks).
    """
    from .metrics import token_energy

    sets = sets or {}
    device = unembedding.head.weight.device
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


def _batched(order: list[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def length_order(model: Model, prompts: Sequence[str]) -> list[int]:
    """Return prompt indices sorted by token length (less padding per batch; results do not depend on it)."""
    lengths = [len(ids) for ids in model.tokenizer(list(prompts))["input_ids"]]
    return sorted(range(len(prompts)), key=lambda i: (lengths[i], i))


def layer_logprobs(model: Model, prompts: Sequence[str], *, batch_size: int = 8) -> torch.Tensor:
    """Return last-token log-probabilities [prompts, layers, vocab] (float32) of the lens at every block.

    Meant for a handful of prompts (the result holds the full vocabulary); sweeps use :func:`sweep`.
    """
    result = torch.empty(len(prompts), model.n_layers, model.unembedding.vocab_size)
    for idx in _batched(length_order(model, prompts), batch_size):
        latents, _ = forward_last(model, [prompts[i] for i in idx])
        with torch.inference_mode():
            lp = torch.log_softmax(model.unembedding(latents), dim=-1)
        result[idx] = lp.cpu()
    return result


def model_logprobs(model: Model, prompts: Sequence[str], *, batch_size: int = 8) -> torch.Tensor:
    """Return the model's own next-token log-probabilities [prompts, vocab] (float32)."""
    result = torch.empty(len(prompts), model.unembedding.vocab_size)
    for idx in _batched(length_order(model, prompts), batch_size):
        _, logits = forward_last(model, [prompts[i] for i in idx])
        result[idx] = torch.log_softmax(logits, dim=-1).cpu()
    return result


def top_tokens(model: Model, prompt: str, k: int = 5) -> pd.DataFrame:
    """Return a tidy table of the lens's top-k tokens at the last token: layer, rank, token_id, token, prob."""
    latents, _ = forward_last(model, [prompt])
    stats = decode(model.unembedding, latents[0], k=k, energy=False)
    rows = []
    for layer in range(model.n_layers):
        for rank in range(k):
            tid = int(stats["top_ids"][layer, rank])
            rows.append(
                {
                    "layer": layer,
                    "rank": rank + 1,
                    "token_id": tid,
                    "token": model.tokenizer.decode([tid]),
                    "prob": float(stats["top_probs"][layer, rank]),
                }
            )
    return pd.DataFrame(rows)


def top_tokens_wide(table: pd.DataFrame) -> pd.DataFrame:
    """Return the top-token table with one row per layer and a ``token (prob)`` cell per rank."""
    cells = table.assign(cell=[f"{t!r} {p:.3f}" for t, p in zip(table["token"], table["prob"])])
    wide = cells.pivot(index="layer", columns="rank", values="cell")
    wide.columns = [f"top{r}" for r in wide.columns]
    return wide


SET_COLUMNS = {"target": "target_ids", "english": "english_ids", "source": "source_ids"}


def stats_frame(prompt_ids: Sequence, n_layers: int, stats: dict[str, torch.Tensor], tokenizer: object) -> pd.DataFrame:
    """Return the tidy (prompt, layer) frame for decoded statistics of rows ordered prompt-major."""
    top = stats["top_ids"][:, 0].tolist()
    vocab = {tid: tokenizer.decode([tid]) for tid in set(top)}
    frame = {
        "prompt_id": np.repeat(np.asarray(prompt_ids), n_layers),
        "layer": np.tile(np.arange(n_layers), len(prompt_ids)),
    }
    for name in SET_COLUMNS:
        if f"p_{name}" in stats:
            frame[f"p_{name}"] = stats[f"p_{name}"].numpy()
    frame["entropy"] = stats["entropy"].double().numpy()
    frame["energy"] = stats["energy"].double().numpy()
    frame["top_token"] = [vocab[t] for t in top]
    frame["top_prob"] = stats["top_probs"][:, 0].double().numpy()
    return pd.DataFrame(frame)


def row_sets(prompts: pd.DataFrame, n_layers: int) -> dict[str, list]:
    """Return the token-id set lists of a prompt frame, each repeated for every layer (prompt-major)."""
    sets = {}
    for name, column in SET_COLUMNS.items():
        if column in prompts:
            values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else list(v) for v in prompts[column]]
            sets[name] = [v for v in values for _ in range(n_layers)]
    return sets


def sweep(
    model: Model,
    prompts: object,
    *,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Return the tidy lens frame, one row per (prompt, layer): p_target, p_english, p_source, entropy, energy, top_token.

    ``prompts`` is a :class:`llmlatent.tasks.PromptSet` (or its DataFrame with columns
    ``prompt_id, prompt, target_ids, english_ids[, source_ids]``). Batches are formed from prompts
    of similar length; results do not depend on batch size or padding. ``seed`` seeds torch for
    families with stochastic layers (none in eval mode) so reruns are byte-identical.
    """
    frame = getattr(prompts, "df", prompts)
    if len(frame) == 0:
        raise ValueError("no prompts to sweep")
    torch.manual_seed(seed)
    texts = frame["prompt"].tolist()
    order = length_order(model, texts)
    parts: dict[int, pd.DataFrame] = {}
    bar = tqdm(total=len(texts), desc="lens sweep", unit="prompt", disable=not progress)
    for idx in _batched(order, batch_size):
        latents, _ = forward_last(model, [texts[i] for i in idx])
        sub = frame.iloc[idx]
        stats = decode(model.unembedding, latents.reshape(-1, latents.shape[-1]), row_sets(sub, model.n_layers))
        part = stats_frame(sub["prompt_id"].tolist(), model.n_layers, stats, model.tokenizer)
        for j, i in enumerate(idx):
            parts[i] = part.iloc[j * model.n_layers : (j + 1) * model.n_layers]
        bar.update(len(idx))
    bar.close()
    return pd.concat([parts[i] for i in range(len(texts))], ignore_index=True)


def from_latents(
    store: object,
    unembedding: Unembedding | Model,
    *,
    tokenizer: object | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """Return the tidy lens frame of a :class:`llmlatent.latents.LatentStore`: the same rows and columns as :func:`sweep`.

    No forward pass: the stored latents are decoded with ``unembedding`` (from
    :func:`llmlatent.model.load_unembedding`, or a loaded Model), which must match the store's
    fingerprint. The tokenizer (to name top tokens) defaults to the one the unembedding or model carries.
    """
    store.check(unembedding)
    if not isinstance(unembedding, Unembedding):  # a Model
        tokenizer = tokenizer or unembedding.tokenizer
        unembedding = unembedding.unembedding
    tokenizer = tokenizer or getattr(unembedding, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("from_latents needs a tokenizer to name the top tokens: pass tokenizer=…")
    frame, n_layers = store.prompts, store.n_layers
    parts = []
    bar = tqdm(total=len(store), desc="lens from latents", unit="prompt", disable=not progress)
    for start in range(0, len(store), batch_size):
        stop = min(len(store), start + batch_size)
        latents = store.latents(rows=slice(start, stop))
        sub = frame.iloc[start:stop]
        stats = decode(unembedding, latents.reshape(-1, latents.shape[-1]), row_sets(sub, n_layers))
        parts.append(stats_frame(sub["prompt_id"].tolist(), n_layers, stats, tokenizer))
        bar.update(stop - start)
    bar.close()
    return pd.concat(parts, ignore_index=True)


def top_tokens_positions(model: Model, prompt: str, positions: int = 8, k: int = 1) -> pd.DataFrame:
    """Return the lens's top-k tokens at the last ``positions`` tokens of one prompt, every layer.

    Tidy columns: layer, position (0-based token index in the prompt), input_token (the prompt's
    token at that position), rank, token_id, top_token, prob. Forward hooks keep only the last
    ``positions`` rows of each block's output, and only those are unembedded (never the full
    sequence × vocabulary). The rows of the last position equal :func:`top_tokens`.
    """
    if positions < 1:
        raise ValueError(f"positions must be at least 1, got {positions}")
    inputs = model.encode([prompt])
    n_tokens = int(inputs["input_ids"].shape[1])
    keep = min(positions, n_tokens)
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _args: object, output: object) -> None:
        captured.append(block_output(output)[0, -keep:].detach())

    handles = [block.register_forward_hook(hook) for block in model.adapter.blocks]
    try:
        with torch.inference_mode():
            try:
                model.hf(**inputs, logits_to_keep=1, use_cache=False)
            except TypeError:  # remote-code models without logits_to_keep
                model.hf(**inputs, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != model.n_layers:
        raise RuntimeError(f"captured {len(captured)} block outputs, expected {model.n_layers}")
    latents = torch.stack([c.to(captured[0].device) for c in captured])  # [layers, keep, hidden]
    stats = decode(model.unembedding, latents.reshape(-1, latents.shape[-1]), k=k, energy=False)
    ids = inputs["input_ids"][0, -keep:].tolist()
    first = n_tokens - keep
    names = {tid: model.tokenizer.decode([tid]) for tid in set(ids) | set(stats["top_ids"].reshape(-1).tolist())}
    rows = []
    for layer in range(model.n_layers):
        for j in range(keep):
            row = layer * keep + j
            for rank in range(k):
                tid = int(stats["top_ids"][row, rank])
                rows.append({
                    "layer": layer, "position": first + j, "input_token": names[ids[j]], "rank": rank + 1,
                    "token_id": tid, "top_token": names[tid], "prob": float(stats["top_probs"][row, rank]),
                })
    return pd.DataFrame(rows)
