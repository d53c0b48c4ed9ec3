"""Reading the residual stream: a lens decodes the residual after each block into next-token probabilities.

- ``base``: the seam. :class:`~llmlatent.lens.base.Lens` maps a residual after block ``layer`` into the space
  the model's own final norm and unembedding read; :class:`~llmlatent.lens.base.LogitLens` (the paper's
  method) is the identity map. Every new lens is one module here that subclasses it.
- ``decode``: streamed unembedding statistics of many rows (entropy, top-k, token-set probabilities).
- ``last_token``: the paper's readings at the last prompt token: ``sweep``, ``from_latents``, top tokens.
- ``generation``: the lens at every position of a text and along a greedy generation.
"""
