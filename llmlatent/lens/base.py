"""The lens seam: how a residual vector after block ``layer`` becomes next-token logits.

A :class:`Lens` maps the residual after a block into the space the model's own final norm and
unembedding read (:meth:`Lens.transform`, per layer), then decodes it with that shared
:class:`~llmlatent.adapter.Unembedding`. The logit lens (:class:`LogitLens`, the paper's method) is the
identity map; a tuned lens or any learned per-layer translator subclasses :class:`Lens` and
overrides :meth:`Lens.transform`. :func:`llmlatent.lens.decode.decode` takes a Lens wherever it takes an
Unembedding.

:func:`of` is the one place that turns what a caller holds (a Model, a LoadedHead, an Unembedding or a
Lens) into a Lens: a Model's is the lens assigned to ``model.lens``, else the logit lens of its head. Every
lens reading in :mod:`llmlatent.lens.last_token` (sweeps, top tokens, log-probabilities, the store's
:func:`~llmlatent.lens.last_token.from_latents`) asks ``of(model)``, so assigning a new lens to ``model.lens``
changes them all without touching any caller. Patching and steering decode the *final* block's output
through ``of(model)`` at the last layer (for the logit lens: the model's own head, as is). :func:`origin` adds
what :func:`of` knows besides the lens (the model's fingerprint and tokenizer), for readings of stored latents.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llmlatent.adapter import Fingerprint, LoadedHead, Unembedding
from llmlatent.errors import UsageError
from llmlatent.model import Model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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


ACCEPTED = "a Model, a LoadedHead, an Unembedding or a Lens"


@dataclass(frozen=True)
class Origin:
    """What a lens reading knows of its source: the lens, the model's fingerprint and its tokenizer.

    ``fingerprint`` is None for a bare Unembedding or Lens (no block count, no name); ``tokenizer`` is None
    when the source carries none.
    """

    lens: Lens
    fingerprint: Fingerprint | None
    tokenizer: PreTrainedTokenizerBase | None

    def identity(self, n_layers: int) -> Fingerprint:
        """Return the model's Fingerprint; a bare head's has ``n_layers`` assumed (only hash and width are known)."""
        if self.fingerprint is not None:
            return self.fingerprint
        head = self.lens.unembedding
        return Fingerprint(
            model="the given unembedding",
            n_layers=n_layers,
            hidden_size=int(head.weight.shape[1]),
            unembedding_sha256=head.fingerprint(),
        )


def of(source: Model | LoadedHead | Unembedding | Lens) -> Lens:
    """Return the Lens of ``source``: a Model's assigned ``model.lens``, else the logit lens of its head.

    A LoadedHead or an Unembedding gives its logit lens, a Lens itself; any other type raises a one-line
    UsageError naming the four accepted types. Nothing is hashed: every reading may call it.
    """
    if isinstance(source, Lens):
        return source
    if isinstance(source, Unembedding):
        return LogitLens(source)
    if isinstance(source, LoadedHead):
        return LogitLens(source.unembedding)
    if isinstance(source, Model):
        if source.lens is None:
            return LogitLens(source.unembedding)
        if not isinstance(source.lens, Lens):
            raise UsageError(
                f"model.lens is a {type(source.lens).__name__}, not a llmlatent.lens.Lens: assign a Lens, or None for "
                "the logit lens"
            )
        return source.lens
    raise UsageError(f"a lens is read from {ACCEPTED}; got a {type(source).__name__}")


def origin(source: Model | LoadedHead | Unembedding | Lens) -> Origin:
    """Return the :class:`Origin` (lens, fingerprint, tokenizer) of ``source``: its :func:`of` lens, and for a Model or
    a LoadedHead its identity (hashing the head) and tokenizer; a bare Unembedding or Lens has neither."""
    lens = of(source)  # refuses any other type
    if isinstance(source, LoadedHead):
        fingerprint = source.fingerprint()
        known = fingerprint if fingerprint.n_layers > 0 else None  # a config without a block count: a bare head
        return Origin(lens, known, source.tokenizer)
    if isinstance(source, Model):
        return Origin(lens, source.fingerprint(), source.tokenizer)
    return Origin(lens, None, None)
