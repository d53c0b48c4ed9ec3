"""The latent store: last-token residuals after every block, on disk (Arrow + JSON), resumable and multi-process.

``store`` holds the API (:func:`collect`, :func:`load`, :class:`LatentStore`); ``format`` owns the on-disk
layout (store.json and its checks); ``shards`` the shards (checksums, claims, writing) and :func:`info`;
``paper`` imports the paper's own precomputed latents (:func:`llmlatent.latents.paper.import_paper`). This
package's public face is the list below; everything else is imported from the module that defines it.
"""

from llmlatent.latents.format import (
    DEFAULT_SHARD_SIZE,
    FingerprintMismatch,
    LatentStoreError,
    check_dtype,
    check_store_dir,
    remove_store,
)
from llmlatent.latents.shards import info
from llmlatent.latents.store import LatentStore, collect, load

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FingerprintMismatch",
    "LatentStore",
    "LatentStoreError",
    "check_dtype",
    "check_store_dir",
    "remove_store",
    "collect",
    "info",
    "load",
]
