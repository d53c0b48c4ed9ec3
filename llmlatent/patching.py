"""Cross-lingual activation patching (Dumas et al., ACL 2025): donor latents written into receiver prompts.

Convention (the follow-up's last-token patching, nnterp's ``patchscope_lens``): patching at ``layer`` j
with ``window`` w overwrites the receiver's residual stream at its **last prompt token** after blocks
j, j+1, …, min(j+w, L)−1, each with the donor's own latent after that same block; every other position
and every later block run on the receiver's own context. The default ``window=1`` patches after block j
only. Overwriting every block from j to the last one (the follow-up's ``object_lens``, which patches an
*object* position, not the last one) would make the last position's final state the donor's own for
every j: a flat curve that measures nothing, so windows are explicit here. Patching after the last block
gives exactly the donor's own next-token distribution.

Fast layer sweep: patching the last position leaves every earlier position unchanged, so the receiver
prefix (all tokens but the last) is run once with a KV cache, and each patched layer then costs one
forward of the last token only (one full forward + L one-token forwards instead of L full forwards),
and several layers run as one forward of their rows on a tiled copy of that cache
(:class:`llmlatent.prefix.Prefix`; the cache itself is only ever cropped back, never deep-copied). Prompts are
left-padded (:meth:`llmlatent.model.Model.encode`), so the last prompt token is
the last column of every row; attention masks and position ids follow the padding.

Results are the raw residual after the last block at the last position ([N, hidden]); decode them with
:func:`llmlatent.lens.decode.decode` (streamed vocabulary slices) to get next-token statistics.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from llmlatent import checks
from llmlatent.capture import (
    batched,
    block_output,
    capture_last,
    check_captured,
    check_left_padded,
    forward_last,
    length_order,
)
from llmlatent.errors import UsageError
from llmlatent.metrics import interval
from llmlatent.model import Model
from llmlatent.prefix import Prefix, no_logits

if TYPE_CHECKING:
    from llmlatent.latents import LatentStore

log = logging.getLogger(__name__)


def check_layer(layer: int, n_layers: int) -> int:
    """Return ``layer`` as an int if 0 ≤ layer < n_layers, else raise a UsageError."""
    return checks.layer(layer, n_layers, error=UsageError)


def check_window(window: int) -> int:
    """Return ``window`` as an int if it is at least 1, else raise a UsageError."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise UsageError(f"window must be a positive integer (blocks patched from the layer on), got {window!r}")
    return window


def patched_blocks(layer: int, window: int, n_layers: int) -> range:
    """Return the blocks whose output is overwritten when patching at ``layer`` with ``window`` (clipped at the end)."""
    layer, window = check_layer(layer, n_layers), check_window(window)
    return range(layer, min(layer + window, n_layers))


def _check_latents(model: Model, latents: torch.Tensor, n_prompts: int, name: str = "donor_latents") -> torch.Tensor:
    shape = (n_prompts, model.n_layers, model.hidden_size)
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise UsageError(f"{name} must be a tensor [prompts, layers, hidden] = {list(shape)}, got {got}")
    return latents


@contextlib.contextmanager
def overwrite_last(
    model: Model, latents: Mapping[int, torch.Tensor], rows: Mapping[int, torch.Tensor] | None = None
) -> Iterator[None]:
    """Yield while forward hooks overwrite the last column of block ``b``'s output with ``latents[b]`` [B, hidden].

    The last column is the last prompt token of every row under left padding (and the only column of a
    one-token forward on a KV cache). ``rows[b]`` (a [B] bool mask) limits block ``b``'s overwrite to
    those rows. The block's output tensor is replaced by a patched copy; hooks are removed when the
    block exits, also after an exception.
    """

    def make(values: torch.Tensor, mask: torch.Tensor | None) -> object:
        def hook(_module: torch.nn.Module, _args: object, output: object) -> object:
            h = block_output(output).clone()
            new = values.to(device=h.device, dtype=h.dtype)
            if mask is None:
                h[:, -1] = new
            else:
                keep = mask.to(h.device)
                h[keep, -1] = new[keep]
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook

    blocks = model.adapter.blocks
    handles = []
    try:
        for b, values in latents.items():
            handles.append(blocks[b].register_forward_hook(make(values, None if rows is None else rows.get(b))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _last_block_latent(model: Model, inputs: dict, latents: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """Return every block's output [B, layers, hidden] at the last column of one (patched) forward of ``inputs``."""
    width = inputs["input_ids"].shape[1]
    last = torch.full((inputs["input_ids"].shape[0],), width - 1, dtype=torch.long)
    # the overwrite hooks are registered first, so the capture hooks see the patched outputs
    with overwrite_last(model, latents), capture_last(model, last) as captured:
        model.run(inputs, logits_to_keep=no_logits())
    check_captured(captured, model.n_layers)
    return torch.stack([c.to(captured[0].device) for c in captured], dim=1).float()


def _encode(model: Model, prompts: Sequence[str]) -> dict:
    inputs = model.encode(list(prompts))
    check_left_padded(inputs)
    return inputs


def patch(
    model: Model, receiver_prompts: Sequence[str], donor_latents: torch.Tensor, layer: int, *, window: int = 1
) -> torch.Tensor:
    """Return the patched run's residual after every block at the last token [B, layers, hidden] (float32).

    One full forward of the receiver prompts in which the last token's residual after blocks
    ``layer`` … ``layer + window − 1`` (clipped at the last block) is replaced by ``donor_latents``
    [B, layers, hidden] at those blocks (row i into receiver i). ``[:, -1]`` is what the head reads:
    decode it with :func:`llmlatent.lens.decode.decode`. This is the reference path; :func:`sweep` runs all
    layers far faster and gives the same numbers.
    """
    donor_latents = _check_latents(model, donor_latents, len(receiver_prompts))
    blocks = patched_blocks(layer, window, model.n_layers)
    inputs = _encode(model, receiver_prompts)
    with torch.inference_mode():
        return _last_block_latent(model, dict(inputs, use_cache=False), {b: donor_latents[:, b] for b in blocks}).cpu()


def donor_latents(model: Model, prompts: Sequence[str], *, batch_size: int = 16) -> torch.Tensor:
    """Return the live-captured last-token latents [N, layers, hidden] (float32) of donor prompts, in order."""
    out = torch.empty(len(prompts), model.n_layers, model.hidden_size)
    for idx in batched(length_order(model, prompts), batch_size):
        latents, _ = forward_last(model, [prompts[i] for i in idx])
        out[idx] = latents.float().cpu()
    return out


def from_store(store: LatentStore, concepts: Sequence[str], model: Model | None = None) -> torch.Tensor:
    """Return the stored latents [len(concepts), layers, hidden] of a latent store's prompts, one per concept, in order.

    ``store`` is a :class:`llmlatent.latents.LatentStore`; with ``model`` its fingerprint is checked first.
    """
    if model is not None:
        store.check(model.fingerprint())
    index = {c: i for i, c in enumerate(store.prompts["concept"])}
    missing = [c for c in concepts if c not in index]
    if missing:
        raise UsageError(
            f"the latent store {store.path} has no prompt for {len(missing)} concept(s), e.g. {missing[0]!r}; "
            "collect it with the same prompt settings"
        )
    rows = torch.tensor([index[c] for c in concepts])
    return store.latents()[rows]


def mean_latents(latents: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return the element-wise mean of several [N, layers, hidden] latent tensors (one per input language)."""
    if not latents:
        raise UsageError("mean_latents needs at least one latent tensor")
    shapes = {tuple(x.shape) for x in latents}
    if len(shapes) != 1:
        raise UsageError(f"latents to average must share one shape, got {sorted(shapes)}")
    return torch.stack([x.float() for x in latents]).mean(0)


class SweepLatents(NamedTuple):
    """What :func:`sweep_many` returns: per donor, patched final latents [N, layers, hidden]; unpatched [N, hidden]."""

    patched: dict[str, torch.Tensor]
    unpatched: torch.Tensor
    layers: list[int]


def _layer_settings(
    layers: Sequence[int],
    window: int,
    n_layers: int,
    donor: torch.Tensor,
    rows: int,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Return (block → donor values, block → row mask) that patch copy j of ``rows`` receivers at ``layers[j]``."""
    values, masks = {}, {}
    for j, ell in enumerate(layers):
        for b in patched_blocks(ell, window, n_layers):
            if b not in values:
                values[b] = donor[:, b].repeat(len(layers), 1)
                masks[b] = torch.zeros(len(layers) * rows, dtype=torch.bool)
            masks[b][j * rows : (j + 1) * rows] = True
    return values, masks


def sweep_many(
    model: Model,
    receiver_prompts: Sequence[str],
    donors: Mapping[str, torch.Tensor],
    *,
    layers: Sequence[int] | None = None,
    window: int = 1,
    batch_size: int = 16,
    max_rows: int = 256,
    progress: bool = False,
) -> SweepLatents:
    """Return the final last-token latents of the receivers patched at every layer with each donor, and unpatched.

    ``donors`` maps a name to donor latents [N, layers, hidden] (row i patches receiver i). Per batch
    (length-ordered; results do not depend on batching or padding): one forward of the prefix with a
    KV cache, one unpatched one-token forward, and per donor the patched last token of every layer,
    with up to ``max_rows`` rows (layers × receivers) in one forward on the tiled prefix cache
    (:class:`llmlatent.prefix.Prefix`).
    """
    n = len(receiver_prompts)
    if n == 0:
        raise UsageError("no receiver prompts to patch")
    for name, latents in donors.items():
        _check_latents(model, latents, n, f"donor latents {name!r}")
    layers = list(range(model.n_layers)) if layers is None else [check_layer(x, model.n_layers) for x in layers]
    check_window(window)
    hidden = model.hidden_size
    patched = {name: torch.empty(n, len(layers), hidden) for name in donors}
    unpatched = torch.empty(n, hidden)
    bar = tqdm(total=n, desc="patching", unit="prompt", disable=not progress)
    with torch.inference_mode():
        for idx in batched(length_order(model, receiver_prompts), batch_size):
            prefix = Prefix.of(model, [receiver_prompts[i] for i in idx])
            unpatched[idx] = prefix.final().cpu()
            step = prefix.copies_per_forward(len(layers), max_rows)
            for name, latents in donors.items():
                rows = latents[idx]
                for start in range(0, len(layers), step):
                    part = layers[start : start + step]
                    values, masks = _layer_settings(part, window, model.n_layers, rows, len(idx))
                    # the hooks are bound now (default arguments), not when the lambda runs
                    final = prefix.final(len(part), lambda _b, v=values, m=masks: overwrite_last(model, v, m))
                    patched[name][idx, start : start + len(part)] = (
                        final.reshape(len(part), len(idx), -1).transpose(0, 1).cpu()
                    )
            bar.update(len(idx))
    bar.close()
    return SweepLatents(patched, unpatched, layers)


def sweep(
    model: Model,
    receiver_prompts: Sequence[str],
    donor: torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    window: int = 1,
    batch_size: int = 16,
) -> torch.Tensor:
    """Return the final last-token latents [N, len(layers), hidden] of receivers patched at each layer."""
    return sweep_many(
        model, receiver_prompts, {"donor": donor}, layers=layers, window=window, batch_size=batch_size
    ).patched["donor"]


def sweep_naive(
    model: Model,
    receiver_prompts: Sequence[str],
    donor: torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    window: int = 1,
    batch_size: int = 16,
) -> torch.Tensor:
    """Return what :func:`sweep` returns by one full patched forward per layer (the slow reference path)."""
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    out = torch.empty(len(receiver_prompts), len(layers), model.hidden_size)
    for idx in batched(length_order(model, receiver_prompts), batch_size):
        texts = [receiver_prompts[i] for i in idx]
        for k, ell in enumerate(layers):
            out[idx, k] = patch(model, texts, donor[idx], ell, window=window)[:, -1]
    return out


def _disjoint(sets: Sequence[Sequence[int]]) -> bool:
    seen: set[int] = set()
    for s in sets:
        if seen & set(s):
            return False
        seen |= set(s)
    return True


def make_pairs(
    pool: Sequence[str], ld: dict[str, list[int]], lr: dict[str, list[int]], n: int | None, seed: int
) -> tuple[list[tuple[str, str]], int]:
    """Return ([(donor concept, receiver concept)], receivers skipped for lack of a disjoint donor).

    The pool is shuffled with ``seed``; the first ``n`` concepts are receivers, each paired with the
    next concept in that order (cyclically) whose L_d and L_r token sets are disjoint from the receiver's.
    """
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    pairs, skipped = [], 0
    for k, receiver in enumerate(order):
        if n is not None and len(pairs) >= n:
            break
        for step in range(1, len(order)):
            donor = order[(k + step) % len(order)]
            if _disjoint([lr[donor], ld[donor], lr[receiver], ld[receiver]]):
                pairs.append((donor, receiver))
                break
        else:
            skipped += 1
    return pairs, skipped


# ---------------------------------------------------------------- the experiments' rows, summarised
# token sets of a patched pair: C_d / C_r = donor / receiver concept, L_d / L_r = donor / receiver answer language
SETS = ("cd_lr", "cd_ld", "cr_lr", "cr_ld")
METRICS = tuple(f"p_{s}" for s in SETS) + tuple(f"top1_{s}" for s in SETS) + ("entropy",)


def summarize(rows: pd.DataFrame, *, ci: str = "normal", seed: int = 0) -> pd.DataFrame:
    """Return per (condition, layer) the mean and 95% interval of every metric (``<metric>_mean/_lo/_hi``) and n."""
    out = []
    for (condition, layer), group in rows.groupby(["condition", "layer"], sort=False, dropna=False):
        record = {"condition": condition, "layer": layer, "n": len(group)}
        for col in METRICS:
            mean, lo, hi = interval(
                group[col].to_numpy(dtype=np.float64), ci=ci, seed=seed + (0 if pd.isna(layer) else int(layer))
            )
            record.update({f"{col}_mean": mean, f"{col}_lo": lo, f"{col}_hi": hi})
        out.append(record)
    summary = pd.DataFrame(out)
    summary["layer"] = summary["layer"].astype("Int64")
    return summary


def _first(part: pd.DataFrame, mask: pd.Series) -> int | None:
    hits = part.loc[mask, "layer"]
    return None if hits.empty else int(hits.min())


def headline(summary: pd.DataFrame) -> dict:
    """Return the run's reading: where the language moves, where the concept moves, mean vs single vs no patch."""
    base = summary[summary["condition"] == "unpatched"].iloc[0]
    out: dict = {"unpatched": {c: round(float(base[f"{c}_mean"]), 6) for c in ("p_cr_lr", "p_cd_lr", "top1_cr_lr")}}
    part = summary[summary["condition"] == "donor"]
    if len(part):
        receiver_best = part[["p_cr_lr_mean", "p_cr_ld_mean"]].max(axis=1)
        out["language_moves_at"] = _first(part, part["p_cr_ld_mean"] > part["p_cr_lr_mean"])
        out["concept_moves_at"] = _first(part, part[["p_cd_ld_mean", "p_cd_lr_mean"]].max(axis=1) > receiver_best)
        out["language_before_concept"] = (
            None
            if out["language_moves_at"] is None or out["concept_moves_at"] is None
            else out["language_moves_at"] < out["concept_moves_at"]
        )
    for condition in ("single", "mean"):
        part = summary[summary["condition"] == condition]
        if len(part):
            best = part.loc[part["p_cd_lr_mean"].idxmax()]
            out[condition] = {
                "best_layer": int(best["layer"]),
                "p_cd_lr": round(float(best["p_cd_lr_mean"]), 6),
                "top1_cd_lr": round(float(best["top1_cd_lr_mean"]), 6),
                "mean_p_cd_lr_over_layers": round(float(part["p_cd_lr_mean"].mean()), 6),
            }
    return out
