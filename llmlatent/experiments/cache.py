"""The latent cache command's settings (which prompts, how the store is written) and the import-latents command's."""

from __future__ import annotations

from dataclasses import dataclass

from llmlatent import checks
from llmlatent.experiments.prompts import PromptSettings
from llmlatent.experiments.settings import Settings, option
from llmlatent.latents import check_dtype

STORAGE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class CacheSettings(PromptSettings):
    """Last-token latents of every block for a task's prompts, into a latent store (rerun to resume)."""

    dtype_store: str = option("float16", "storage dtype", choices=STORAGE_DTYPES)
    shard_size: int | None = option(None, "prompts per shard (default 64; a resumed store keeps its own)")
    repair: bool = option(
        False, "rebuild an unreadable store.json from the prompts and model, keeping every shard that still verifies"
    )

    def __post_init__(self) -> None:
        check_dtype(self.dtype_store)
        checks.count(self.shard_size, "shard_size", optional=True)
        super().__post_init__()


@dataclass(frozen=True)
class ImportSettings(Settings):
    """The paper's precomputed latents (wendlerc/llm-latent-language) into latent stores, one per .pt file."""

    dtype_store: str = option("float32", "storage dtype (the paper's files are float32)", choices=STORAGE_DTYPES)
    shard_size: int | None = option(None, "prompts per shard (default 64; a resumed store keeps its own)")

    def __post_init__(self) -> None:
        check_dtype(self.dtype_store)
        checks.count(self.shard_size, "shard_size", optional=True)
