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
forward of the last token only (one full forward + L one-token forwards instead of L full forwards).
After each one-token forward the cache is cropped back to the prefix (``DynamicCache.crop(-1)``), never
deep-copied. Prompts are left-padded (:meth:`llmlatent.model.Model.encode`), so the last prompt token is
the last column of every row; attention masks and position ids follow the padding.

Results are the raw residual after the last block at the last position ([N, hidden]); decode them with
:func:`llmlatent.decode.decode` (streamed vocabulary slices) to get next-token statistics.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from . import checks
from .capture import _batched, block_output, capture_last, forward_last, length_order
from .errors import LlmlatentError
from .model import Model

if TYPE_CHECKING:
    from .latents import LatentStore

log = logging.getLogger(__name__)


class PatchError(LlmlatentError, ValueError):
    """Bad patching input (layer, window, latent shapes); the message says what to pass instead."""


def check_layer(layer: int, n_layers: int) -> int:
    """Return ``layer`` as an int if 0 ≤ layer < n_layers, else raise a PatchError."""
    return checks.layer(layer, n_layers, error=PatchError)


def check_window(window: int) -> int:
    """Return ``window`` as an int if it is at least 1, else raise a PatchError."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise PatchError(f"window must be a positive integer (blocks patched from the layer on), got {window!r}")
    return window


def patched_blocks(layer: int, window: int, n_layers: int) -> range:
    """Return the blocks whose output is overwritten when patching at ``layer`` with ``window`` (clipped at the last block)."""
    layer, window = check_layer(layer, n_layers), check_window(window)
    return range(layer, min(layer + window, n_layers))


def _check_latents(model: Model, latents: torch.Tensor, n_prompts: int, name: str = "donor_latents") -> torch.Tensor:
    shape = (n_prompts, model.n_layers, model.hidden_size)
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise PatchError(f"{name} must be a tensor [prompts, layers, hidden] = {list(shape)}, got {got}")
    return latents


@contextlib.contextmanager
def overwrite_last(model: Model, latents: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Yield while forward hooks overwrite the last column of block ``b``'s output with ``latents[b]`` [B, hidden].

    The last column is the last prompt token of every row under left padding (and the only column of a
    one-token forward on a KV cache). The block's output tensor is replaced by a patched copy; hooks are
    removed when the block exits, also after an exception.
    """
    def make(values: torch.Tensor) -> object:
        def hook(_module: torch.nn.Module, _args: object, output: object) -> object:
            h = block_output(output).clone()
            h[:, -1] = values.to(device=h.device, dtype=h.dtype)
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return hook

    blocks = model.adapter.blocks
    handles = []
    try:
        for b, values in latents.items():
            handles.append(blocks[b].register_forward_hook(make(values)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _no_logits() -> torch.Tensor:
    # logits_to_keep as an empty index: the head computes no logits at all (we decode the residual ourselves)
    return torch.zeros(0, dtype=torch.long)


def _last_block_latent(model: Model, inputs: dict, latents: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """Return every block's output [B, layers, hidden] at the last column of one (patched) forward of ``inputs``."""
    width = inputs["input_ids"].shape[1]
    last = torch.full((inputs["input_ids"].shape[0],), width - 1, dtype=torch.long)
    # the overwrite hooks are registered first, so the capture hooks see the patched outputs
    with overwrite_last(model, latents), capture_last(model, last) as captured:
        model.run(inputs, logits_to_keep=_no_logits())
    if len(captured) != model.n_layers:
        raise RuntimeError(f"captured {len(captured)} block outputs, expected {model.n_layers}")
    return torch.stack([c.to(captured[0].device) for c in captured], dim=1).float()


def _encode(model: Model, prompts: Sequence[str]) -> dict:
    inputs = model.encode(list(prompts))
    if not bool(inputs["attention_mask"][:, -1].all()):
        raise RuntimeError("the tokenizer must pad on the left so that the last column is every prompt's last token")
    return inputs


def patch(model: Model, receiver_prompts: Sequence[str], donor_latents: torch.Tensor, layer: int, *,
          window: int = 1) -> torch.Tensor:
    """Return the patched run's residual after every block at the last token [B, layers, hidden] (float32).

    One full forward of the receiver prompts in which the last token's residual after blocks
    ``layer`` … ``layer + window − 1`` (clipped at the last block) is replaced by ``donor_latents``
    [B, layers, hidden] at those blocks (row i into receiver i). ``[:, -1]`` is what the head reads:
    decode it with :func:`llmlatent.decode.decode`. This is the reference path; :func:`sweep` runs all
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
    for idx in _batched(length_order(model, prompts), batch_size):
        latents, _ = forward_last(model, [prompts[i] for i in idx])
        out[idx] = latents.float().cpu()
    return out


def from_store(store: LatentStore, concepts: Sequence[str], model: Model | None = None) -> torch.Tensor:
    """Return the stored latents [len(concepts), layers, hidden] of a latent store's prompts, one per concept, in order.

    ``store`` is a :class:`llmlatent.latents.LatentStore`; with ``model`` its fingerprint is checked first.
    """
    if model is not None:
        store.check(model)
    index = {c: i for i, c in enumerate(store.prompts["concept"])}
    missing = [c for c in concepts if c not in index]
    if missing:
        raise PatchError(f"the latent store {store.path} has no prompt for {len(missing)} concept(s), e.g. {missing[0]!r}; "
                         "collect it with the same prompt settings")
    rows = torch.tensor([index[c] for c in concepts])
    return store.latents()[rows]


def mean_latents(latents: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return the element-wise mean of several [N, layers, hidden] latent tensors (one per input language)."""
    if not latents:
        raise PatchError("mean_latents needs at least one latent tensor")
    shapes = {tuple(x.shape) for x in latents}
    if len(shapes) != 1:
        raise PatchError(f"latents to average must share one shape, got {sorted(shapes)}")
    return torch.stack([x.float() for x in latents]).mean(0)


class SweepLatents(NamedTuple):
    """What :func:`sweep` returns: per donor name the patched final latents [N, len(layers), hidden]; the unpatched [N, hidden]."""

    patched: dict[str, torch.Tensor]
    unpatched: torch.Tensor
    layers: list[int]


def _cache_kwarg(model: Model) -> str:
    return "cache" if "cache" in inspect.signature(model.hf.forward).parameters else "past_key_values"


class _Prefix:
    """A batch of receiver prompts with the KV cache of all tokens but the last, run once."""

    def __init__(self, model: Model, prompts: Sequence[str]) -> None:
        self.model = model
        inputs = _encode(model, prompts)
        self.cache = None
        if inputs["input_ids"].shape[1] == 1:  # one-token prompts: nothing to cache
            self.tail = dict(inputs, use_cache=False)
            return
        head = {k: v[:, :-1] for k, v in inputs.items()}
        out = model.run(head, use_cache=True, logits_to_keep=_no_logits())
        self.cache = getattr(out, "cache", None)  # transformers ≥ 5.2x; older versions name it past_key_values
        if self.cache is None:
            self.cache = getattr(out, "past_key_values", None)
        if self.cache is None or not hasattr(self.cache, "crop"):
            raise RuntimeError(f"{model.name} returned no croppable KV cache; use patching.sweep_naive")
        if hasattr(self.cache, "activate_past_recording"):
            self.cache.activate_past_recording()  # sliding-window layers keep what crop() needs to roll back
        # the last token: its own id and position, the full mask (prefix padding stays masked), the prefix cache
        self.tail = {"input_ids": inputs["input_ids"][:, -1:], "attention_mask": inputs["attention_mask"],
                     "position_ids": inputs["position_ids"][:, -1:], _cache_kwarg(model): self.cache, "use_cache": True}

    def final(self, latents: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Return the last block's output [B, hidden] at the last token, patched with ``latents``; the cache is rolled back."""
        try:
            return _last_block_latent(self.model, self.tail, latents)[:, -1]
        finally:
            if self.cache is not None:
                self.cache.crop(-1)  # drop the last token's keys/values: the cache is the prefix's again


def sweep_many(
    model: Model,
    receiver_prompts: Sequence[str],
    donors: Mapping[str, torch.Tensor],
    *,
    layers: Sequence[int] | None = None,
    window: int = 1,
    batch_size: int = 16,
    progress: bool = False,
) -> SweepLatents:
    """Return the final last-token latents of the receivers patched at every layer with each donor, and unpatched.

    ``donors`` maps a name to donor latents [N, layers, hidden] (row i patches receiver i). Per batch
    (length-ordered; results do not depend on batching or padding): one forward of the prefix with a
    KV cache, one unpatched one-token forward, and per donor and layer one patched one-token forward.
    """
    n = len(receiver_prompts)
    if n == 0:
        raise PatchError("no receiver prompts to patch")
    for name, latents in donors.items():
        _check_latents(model, latents, n, f"donor latents {name!r}")
    layers = list(range(model.n_layers)) if layers is None else [check_layer(x, model.n_layers) for x in layers]
    check_window(window)
    hidden = model.hidden_size
    patched = {name: torch.empty(n, len(layers), hidden) for name in donors}
    unpatched = torch.empty(n, hidden)
    bar = tqdm(total=n, desc="patching", unit="prompt", disable=not progress)
    with torch.inference_mode():
        for idx in _batched(length_order(model, receiver_prompts), batch_size):
            prefix = _Prefix(model, [receiver_prompts[i] for i in idx])
            unpatched[idx] = prefix.final({}).cpu()
            for name, latents in donors.items():
                rows = latents[idx]
                for k, ell in enumerate(layers):
                    blocks = patched_blocks(ell, window, model.n_layers)
                    patched[name][idx, k] = prefix.final({b: rows[:, b] for b in blocks}).cpu()
            bar.update(len(idx))
    bar.close()
    return SweepLatents(patched, unpatched, layers)


def sweep(model: Model, receiver_prompts: Sequence[str], donor: torch.Tensor, *, layers: Sequence[int] | None = None,
          window: int = 1, batch_size: int = 16) -> torch.Tensor:
    """Return the final last-token latents [N, len(layers), hidden] of receivers patched at each layer (KV-prefix fast path)."""
    return sweep_many(model, receiver_prompts, {"donor": donor}, layers=layers, window=window,
                      batch_size=batch_size).patched["donor"]


def sweep_naive(model: Model, receiver_prompts: Sequence[str], donor: torch.Tensor, *,
                layers: Sequence[int] | None = None, window: int = 1, batch_size: int = 16) -> torch.Tensor:
    """Return what :func:`sweep` returns by one full patched forward per layer (the slow reference path)."""
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    out = torch.empty(len(receiver_prompts), len(layers), model.hidden_size)
    for idx in _batched(length_order(model, receiver_prompts), batch_size):
        texts = [receiver_prompts[i] for i in idx]
        for k, ell in enumerate(layers):
            out[idx, k] = patch(model, texts, donor[idx], ell, window=window)[:, -1]
    return out
