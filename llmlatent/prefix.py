"""The prompt-prefix KV cache: all tokens but the last run once, the last token then under many interventions.

Steering and patching change the residual stream at the **last prompt token** only, so every earlier
position is the same in all their runs. :class:`Prefix` runs the prompts' prefix (every token but the
last; prompts left-padded by :meth:`llmlatent.model.Model.encode`, so the last token is the last column
of every row) once with a KV cache. Each intervention then costs one forward of the last token only.

Two ways to reuse the cache, both exact:

* ``copies=1``: the last token runs on the cache itself, which is cropped back to the prefix afterwards
  (``crop``; never deep-copied). Sliding-window layers are switched to keep what they would drop until
  the crop (``activate_past_recording``), so the roll-back is exact.
* ``copies=k``: the cache's rows are tiled k times (copy-major: copy j is rows j·B … (j+1)·B − 1) into a
  new cache that is dropped afterwards, so k interventions run as one forward of k·B rows. One wide
  forward uses the CPU's matrix units far better than k narrow ones (and a GPU's, more so); the original
  cache is not touched. Tiling uses the cache's own beam-search reorder (``reorder_cache``) on shallow
  copies of its layers, so each layer type tiles its own state.

Caches that cannot be cropped or tiled (legacy tuples, exotic cache classes) and one-token prompts fall
back to full forwards of the (tiled) prompts: slower, same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import torch

from llmlatent.capture import capture_last, check_left_padded
from llmlatent.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import Cache

    from llmlatent.model import Model

# bytes of tiled KV cache one forward may build: copies of a large model's cache (e.g. 7B, ~40 MB per
# 75-token row in bf16) would otherwise outgrow the memory the model leaves; small models hit max_rows first
TILE_BYTES = 1 << 30

Intervention = Callable[[dict], contextlib.AbstractContextManager]  # forward kwargs → hooks for that forward


def cache_kwarg(model: Model) -> str:
    """Return the name under which ``model.hf.forward`` takes a KV cache (``cache`` or ``past_key_values``)."""
    return "cache" if "cache" in inspect.signature(model.hf.forward).parameters else "past_key_values"


def no_logits() -> torch.Tensor:
    """Return ``logits_to_keep`` as an empty position index: the head computes no logits at all."""
    return torch.zeros(0, dtype=torch.long)


def prefix_cache(model: Model, inputs: Mapping[str, torch.Tensor]) -> Cache | None:
    """Return the KV cache of every position but the last of left-padded ``inputs`` (from ``model.encode``).

    Returns None for one-token prompts and for caches that cannot be cropped (legacy tuples); callers
    then run full forwards.
    """
    if inputs["input_ids"].shape[1] < 2:
        return None
    check_left_padded(inputs)
    head = {k: v[:, :-1] for k, v in inputs.items()}
    with torch.inference_mode():
        out = model.run(head, use_cache=True, logits_to_keep=no_logits())
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if (
        cache is None
        or not callable(getattr(cache, "crop", None))
        or not callable(getattr(cache, "get_seq_length", None))
    ):
        return None
    if callable(getattr(cache, "activate_past_recording", None)):
        cache.activate_past_recording()
    return cache


def crop_cache(cache: Cache, length: int) -> None:
    """Return None after cutting ``cache`` back to its first ``length`` positions (a continuation's are dropped)."""
    extra = int(cache.get_seq_length()) - int(length)
    if extra > 0:
        cache.crop(-extra)  # a negative count removes that many positions (transformers ≥ 4.x and 5.x)
    if int(cache.get_seq_length()) != int(length):
        raise ModelLoadError(f"the KV cache could not be cropped back to {length} positions")


def tile_cache(cache: Cache, rows: int, copies: int) -> Cache | None:
    """Return a new cache with ``copies`` copies of ``cache``'s ``rows`` rows (copy-major), or None if it cannot tile.

    ``cache`` itself is unchanged: its layer objects are shallow-copied and each copy re-indexes its own
    tensors (``reorder_cache`` builds new ones with ``index_select``).
    """
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list) or not callable(getattr(cache, "reorder_cache", None)):
        return None
    tiled = copy.copy(cache)
    tiled.layers = [copy.copy(layer) for layer in layers]
    index = torch.arange(rows).repeat(copies)
    try:
        tiled.reorder_cache(index)  # type: ignore[arg-type]  # an int64 tensor: a LongTensor
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return tiled


def _tile(inputs: Mapping[str, torch.Tensor], copies: int) -> dict[str, torch.Tensor]:
    return {k: v.repeat(copies, *([1] * (v.dim() - 1))) for k, v in inputs.items()}


class Prefix:
    """Left-padded prompt inputs with the KV cache of all but their last token (run once; see the module docstring)."""

    def __init__(self, model: Model, inputs: Mapping[str, torch.Tensor], reuse: bool = True) -> None:
        check_left_padded(inputs)
        self.model, self.inputs = model, dict(inputs)
        self.rows, self.width = int(inputs["input_ids"].shape[0]), int(inputs["input_ids"].shape[1])
        self.cache = prefix_cache(model, self.inputs) if reuse else None
        tensors = [
            t
            for layer in getattr(self.cache, "layers", [])
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
        ]
        self.row_bytes = sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor)) // max(1, self.rows)

    @classmethod
    def of(cls, model: Model, prompts: list[str], reuse: bool = True) -> Prefix:
        """Return the prefix of prompt texts (encoded with ``model.encode``)."""
        return cls(model, model.encode(list(prompts)), reuse)

    @contextlib.contextmanager
    def cached(self, copies: int = 1) -> Iterator[Cache | None]:
        """Yield the prefix cache for ``copies`` copies of the rows (None when there is none or it cannot tile).

        ``copies=1`` yields the cache itself and crops it back to the prefix on exit, also after an
        exception; more copies yield a tiled copy, dropped afterwards.
        """
        if self.cache is None:
            yield None
            return
        cache = self.cache if copies == 1 else tile_cache(self.cache, self.rows, copies)
        try:
            yield cache
        finally:
            if cache is self.cache:
                crop_cache(cache, self.width - 1)

    @contextlib.contextmanager
    def continued(self, copies: int = 1) -> Iterator[dict]:
        """Yield forward kwargs for ``copies`` copies of the prompts that run only the last token on the prefix cache.

        Without a usable cache they are the whole (tiled) prompts. The cache is the prefix's again on exit.
        """
        with self.cached(copies) as cache:
            if cache is None:
                yield dict(_tile(self.inputs, copies), use_cache=False)
                return
            tail = {k: v[:, -1:] for k, v in self.inputs.items() if k != "attention_mask"}
            tail["attention_mask"] = self.inputs["attention_mask"]  # the prefix's padding stays masked
            yield dict(_tile(tail, copies), **{cache_kwarg(self.model): cache}, use_cache=True)

    def final(self, copies: int = 1, intervention: Intervention | None = None) -> torch.Tensor:
        """Return the last block's output at the last token [copies · rows, hidden] (float32), under ``intervention``.

        ``intervention(batch)`` gets the forward's kwargs (the last token on the cache, or whole prompts
        without one) and returns a context manager holding hooks for its copies · rows rows (copy-major);
        they are registered before the capture hook, so the capture sees their effect.
        The result is the raw residual the final norm and head read: decode it with
        :func:`llmlatent.lens.decode.decode`.
        """
        model = self.model
        last = torch.full((copies * self.rows,), -1, dtype=torch.long)
        with torch.inference_mode(), self.continued(copies) as batch:
            hooks = intervention(batch) if intervention is not None else contextlib.nullcontext()
            last = last + batch["input_ids"].shape[1]  # the last column, whatever was fed
            with hooks, capture_last(model, last, blocks=[model.adapter.blocks[-1]]) as captured:
                model.run(batch, logits_to_keep=no_logits())
        return captured[0].float()

    def copies_per_forward(self, wanted: int, max_rows: int, max_bytes: int = TILE_BYTES) -> int:
        """Return how many copies of the rows one forward runs (≤ ``wanted``, ``max_rows`` rows, ``max_bytes``)."""
        by_rows = int(max_rows) // max(1, self.rows)
        by_bytes = int(max_bytes) // max(1, self.row_bytes * self.rows)
        return max(1, min(int(wanted), by_rows, by_bytes))
