"""The hooks of one steering setting: a direction added after one block, at the last, all or generated positions.

A pre-hook on the model reads the attention mask and the KV-cache length of each forward; a forward
hook on the block adds the delta (one vector, or one per row). :mod:`llmlatent.steering.vector` builds them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from llmlatent.capture import block_output, last_positions
from llmlatent.errors import SteeringError

if TYPE_CHECKING:
    from llmlatent.model import Model

POSITIONS = ("last", "all", "generated")


def _past_length(kwargs: dict) -> int:
    past = next((kwargs[k] for k in ("cache", "past_key_values") if kwargs.get(k) is not None), None)
    if past is not None and hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    if isinstance(past, (tuple, list)) and past and past[0] is not None:  # legacy tuple caches
        return int(past[0][0].shape[-2])
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    return 0


class SteeringHook:
    """The hooks of one :meth:`SteeringVector.apply`: a pre-hook on the model reads the attention mask
    and the KV-cache length; a forward hook on the block adds the vector. ``calls`` records, per
    block call, ``(sequence length, cached length, steered positions per row)``.
    """

    def __init__(self, model: Model, layer: int, delta: torch.Tensor, positions: str) -> None:
        if positions not in POSITIONS:
            raise SteeringError(f"positions must be one of {', '.join(POSITIONS)}; got {positions!r}")
        self.delta, self.positions = delta, positions
        self.calls: list[tuple[int, int, int]] = []
        self._state: tuple[torch.Tensor | None, int] | None = None
        self._handles = [
            model.hf.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.hf.register_forward_hook(self._post, with_kwargs=True),
            model.adapter.blocks[layer].register_forward_hook(self._block),
        ]

    def _pre(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._state = (mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None, _past_length(kwargs))

    def _post(self, *_args: object) -> None:
        self._state = None

    def _block(self, _module: torch.nn.Module, _args: object, output: object) -> object:
        h = block_output(output)
        batch, length = h.shape[0], h.shape[1]
        mask, past = self._state or (None, 0)
        delta = self.delta.to(h.device, h.dtype)
        if delta.dim() == 2 and delta.shape[0] != batch:
            raise SteeringError(f"per-row steering deltas for {delta.shape[0]} rows, but the batch has {batch} rows")
        if self.positions == "all" or (self.positions == "generated" and past > 0):
            new, steered = h + (delta[:, None] if delta.dim() == 2 else delta), length
        elif past > 0:  # "last" while continuing a cache: the prompt's last token was already steered
            self.calls.append((length, past, 0))
            return None
        else:
            if mask is not None and mask.shape[1] == length:
                last = last_positions(mask).to(h.device)
            else:
                last = torch.full((batch,), length - 1, device=h.device)
            new = h.clone()
            rows = torch.arange(batch, device=h.device)
            new[rows, last] = new[rows, last] + delta
            steered = 1
        self.calls.append((length, past, steered))
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
