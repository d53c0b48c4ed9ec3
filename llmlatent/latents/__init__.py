"""The latent store: last-token residuals after every block, on disk (Arrow + JSON), resumable and multi-process.

``store`` holds the API (:func:`collect`, :func:`load`, :func:`info`, :class:`LatentStore`); ``format``
owns the on-disk layout (store.json, shards, checksums, claims). This package's public face is the
list below; everything else is imported from the module that defines it.
"""

from llmlatent.latents.format import (
    DEFAULT_SHARD_SIZE,
    FingerprintMismatch,
    LatentStoreError,
    check_dtype,
    check_store_dir,
)
from llmlatent.latents.store import LatentStore, collect, info, load

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FingerprintMismatch",
    "LatentStore",
    "LatentStoreError",
    "check_dtype",
    "check_store_dir",
    "collect",
    "info",
    "load",
]
