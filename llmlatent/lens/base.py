"""The lens seam: how a residual vector after block ``layer`` becomes next-token logits.

A :class:`Lens` maps the residual after a block into the space the model's own final norm and
unembedding read (:meth:`Lens.transform`, per layer), then decodes it with that shared
:class:`~llmlatent.adapter.Unembedding`. The logit lens (:class:`LogitLens`, the paper's method) is the
identity map; a tuned lens or any learned per-layer translator subclasses :class:`Lens` and
overrides :meth:`Lens.transform`. :func:`llmlatent.lens.decode.decode` takes a Lens wherever it takes an
Unembedding; every lens reading in :mod:`llmlatent.lens.last_token` (sweeps, top tokens, log-probabilities, the
store's :func:`~llmlatent.lens.last_token.from_latents`) goes through ``Model.lens``, so assigning a new lens there
changes them all without touching any caller. Patching and steering decode the *final* block's output
through ``Model.lens`` at the last layer (for the logit lens: the model's own head, as is).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from llmlatent.adapter import Unembedding
from llmlatent.errors import UsageError


class Lens(ABC):
    """A per-layer translator of residual vectors followed by the model's shared unembedding."""

    def __init__(self, unembedding: Unembedding) -> None:
        self.unembedding = unembedding

    @abstractmethod
    def transform(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Return residuals ``hidden`` [..., hidden] after block ``layer`` mapped into the unembedding's input space."""

    def translate(self, hidden: torch.Tensor, layers: torch.Tensor | Sequence[int] | None) -> torch.Tensor:
        """Return rows ``hidden`` [N, hidden] each mapped by :meth:`transform` of its block ``layers[i]`` ([N] ints)."""
        if layers is None:
            raise UsageError(f"{type(self).__name__} decodes per layer: pass layers= (the block of every row)")
        layers = torch.as_tensor(layers).reshape(-1)
        if layers.shape[0] != hidden.shape[0]:
            raise UsageError(f"layers has {layers.shape[0]} entries for {hidden.shape[0]} rows")
        out: torch.Tensor | None = None
        for layer in layers.unique().tolist():
            rows = (layers == layer).to(hidden.device)
            part = self.transform(hidden[rows], int(layer))
            if out is None:
                out = torch.empty((hidden.shape[0], part.shape[-1]), dtype=part.dtype, device=part.device)
            out[rows.to(part.device)] = part
        return hidden if out is None else out

    def logits(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Return float32 logits [..., vocab] of residual vectors ``hidden`` after block ``layer``."""
        return self.unembedding(self.transform(hidden, layer))


class LogitLens(Lens):
    """The logit lens (nostalgebraist 2020; Wendler et al. 2024): the final norm and unembedding applied as is."""

    def transform(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Return ``hidden`` itself: the logit lens reads every block's residual with the final layer's head."""
        return hidden

    def translate(self, hidden: torch.Tensor, layers: torch.Tensor | Sequence[int] | None) -> torch.Tensor:
        """Return ``hidden`` itself (no copy, so decoding is bit-identical to decoding the raw residuals)."""
        return hidden


def as_lens(lens_or_unembedding: Lens | Unembedding) -> Lens:
    """Return ``lens_or_unembedding`` as a Lens: an Unembedding becomes its :class:`LogitLens`."""
    if isinstance(lens_or_unembedding, Lens):
        return lens_or_unembedding
    if isinstance(lens_or_unembedding, Unembedding):
        return LogitLens(lens_or_unembedding)
    raise UsageError(f"expected a Lens or an Unembedding, got {type(lens_or_unembedding).__name__}")
