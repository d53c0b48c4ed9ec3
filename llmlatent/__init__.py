"""llmlatent: the latent language of multilingual transformers (Wendler et al., 2024), on any HF causal LM."""

__version__ = "0.1.0"
