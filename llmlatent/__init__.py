"""llmlatent: the latent language of multilingual transformers (Wendler et al., 2024), on any HF causal LM.

The public face: ``import llmlatent as ll`` carries a notebook.

- ``ll.load(name)`` → :class:`Model` (``None``: the embedded gemma-3-270m); ``ll.load_unembedding`` → its head alone.
- ``ll.tasks.build(task, src, tgt, model.tokenizer)`` → :class:`PromptSet` (``ll.tasks.custom`` for your own words);
  ``ll.sets_table(prompts, tokenizer)`` shows its token sets.
- ``ll.sweep(model, prompts)`` → tidy rows (prompt × layer); ``ll.metrics.summarize`` → curves per layer;
  ``ll.top_tokens(model, prompt)``; ``ll.lens_of(model)`` → the :class:`Lens` every reading uses (assign
  ``model.lens`` to change it; :class:`LogitLens` is the paper's).
- ``ll.collect(model, prompts, path)`` → :class:`LatentStore`; ``ll.from_latents(store, head)`` reads it without
  a forward pass.
- ``ll.mean_difference(target_store, source_store, layer)`` → :class:`SteeringVector` (``with vector.apply(model, α)``).
- The packages ``ll.lens``, ``ll.latents``, ``ll.steering`` and ``ll.languages`` have faces of their own.

Names load on first use (``import llmlatent`` does not import torch): ``_HOMES`` says where each one is
defined, and the ``TYPE_CHECKING`` block imports the same names for type checkers and the architecture test.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from llmlatent import languages, latents, lens, metrics, steering, tasks
    from llmlatent.latents import LatentStore, collect
    from llmlatent.lens import Lens, LogitLens, from_latents, sweep, top_tokens
    from llmlatent.lens import of as lens_of
    from llmlatent.model import Model, load, load_unembedding
    from llmlatent.provenance import sets_table
    from llmlatent.steering import SteeringVector, mean_difference
    from llmlatent.tasks import PromptSet

# public name → (module, attribute in it; None: the module itself)
_HOMES: dict[str, tuple[str, str | None]] = {
    "load": ("llmlatent.model", "load"),
    "load_unembedding": ("llmlatent.model", "load_unembedding"),
    "Model": ("llmlatent.model", "Model"),
    "tasks": ("llmlatent.tasks", None),
    "PromptSet": ("llmlatent.tasks", "PromptSet"),
    "sets_table": ("llmlatent.provenance", "sets_table"),
    "metrics": ("llmlatent.metrics", None),
    "lens": ("llmlatent.lens", None),
    "Lens": ("llmlatent.lens", "Lens"),
    "LogitLens": ("llmlatent.lens", "LogitLens"),
    "lens_of": ("llmlatent.lens", "of"),
    "sweep": ("llmlatent.lens", "sweep"),
    "top_tokens": ("llmlatent.lens", "top_tokens"),
    "from_latents": ("llmlatent.lens", "from_latents"),
    "latents": ("llmlatent.latents", None),
    "LatentStore": ("llmlatent.latents", "LatentStore"),
    "collect": ("llmlatent.latents", "collect"),
    "steering": ("llmlatent.steering", None),
    "SteeringVector": ("llmlatent.steering", "SteeringVector"),
    "mean_difference": ("llmlatent.steering", "mean_difference"),
    "languages": ("llmlatent.languages", None),
}

__all__ = [
    "__version__",
    "load",
    "load_unembedding",
    "Model",
    "tasks",
    "PromptSet",
    "sets_table",
    "metrics",
    "lens",
    "Lens",
    "LogitLens",
    "lens_of",
    "sweep",
    "top_tokens",
    "from_latents",
    "latents",
    "LatentStore",
    "collect",
    "steering",
    "SteeringVector",
    "mean_difference",
    "languages",
]


def __getattr__(name: str) -> object:
    """Return the public ``name`` (imported from its home module on first use); AttributeError for any other."""
    if name not in _HOMES:
        raise AttributeError(f"module 'llmlatent' has no attribute {name!r}")
    module, attribute = _HOMES[name]
    value = importlib.import_module(module)
    value = value if attribute is None else getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Return the public names and the module's own attributes."""
    return sorted(set(globals()) | set(__all__))
