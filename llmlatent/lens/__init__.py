"""Reading the residual stream: a lens decodes the residual after each block into next-token probabilities.

- ``base``: the seam. :class:`~llmlatent.lens.base.Lens` maps a residual after block ``layer`` into the space
  the model's own final norm and unembedding read; :class:`~llmlatent.lens.base.LogitLens` (the paper's
  method) is the identity map. Every new lens is one module here that subclasses it.
- ``decode``: streamed unembedding statistics of many rows (entropy, top-k, token-set probabilities).
- ``last_token``: the paper's readings at the last prompt token: ``sweep``, ``from_latents``, top tokens.
- ``generation``: the lens at every position of a text and along a greedy generation.

This package's public face is the list below (``decode`` and ``generation`` are the modules, whose functions
of the same name are :func:`llmlatent.lens.decode.decode` and :func:`llmlatent.lens.generation.generation`).
"""

from llmlatent.lens import decode, generation
from llmlatent.lens.base import Lens, LogitLens, Origin, of, origin
from llmlatent.lens.generation import Generation, language_share, positions, words_generation
from llmlatent.lens.last_token import (
    from_latents,
    layer_logprobs,
    sweep,
    top_tokens,
    top_tokens_positions,
    top_tokens_wide,
)

__all__ = [
    "Generation",
    "Lens",
    "LogitLens",
    "Origin",
    "decode",
    "from_latents",
    "generation",
    "language_share",
    "layer_logprobs",
    "of",
    "origin",
    "positions",
    "sweep",
    "top_tokens",
    "top_tokens_positions",
    "top_tokens_wide",
    "words_generation",
]
