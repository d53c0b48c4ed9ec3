"""Steering the output language: a direction added to the residual stream after one block.

- ``vector``: :class:`~llmlatent.steering.vector.SteeringVector` and its ``apply()`` context manager; a
  :class:`~llmlatent.steering.vector.Setting` (vector, α), one setting of many steered at once;
  ``mean_difference`` (Δ = μ_target − μ_source of cached latents, CAA).
- ``hook``: the forward hooks of one steering setting.
- ``batched``: steered last-token forwards and greedy generations under many settings at once, over one
  prompt-prefix KV cache.
- ``file``: the safetensors file format of a vector, hashed and fingerprinted.
- ``language_means``: per-language latent means and the benchmark's vector methods built from them.

This package's public face is the list below; everything else is imported from the module that defines it.
"""

from llmlatent.steering.batched import Scored, generate, generate_many, generate_scored, steered_final
from llmlatent.steering.hook import SteeringHook
from llmlatent.steering.language_means import LanguageMeans
from llmlatent.steering.vector import SteeringVector, collect_pair, from_prompts, mean_difference

__all__ = [
    "LanguageMeans",
    "Scored",
    "SteeringHook",
    "SteeringVector",
    "collect_pair",
    "from_prompts",
    "generate",
    "generate_many",
    "generate_scored",
    "mean_difference",
    "steered_final",
]
