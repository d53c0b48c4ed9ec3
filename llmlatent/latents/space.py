"""Disk space of a latent store: refuse up front when it cannot fit, and turn a full disk into one line.

A store's size is known before the first forward pass: prompts × layers × width × bytes per value (plus
a little Arrow and JSON around them), so :func:`check_free_space` refuses before anything is created.
Another process may still fill the disk meanwhile; :func:`disk_full` then says where, how much and what
to do. Finished shards are kept (a rerun resumes) and the unfinished shard's temporary folder is removed
by the shard writer (:func:`llmlatent.latents.shards.stage_shard` and ``finish_shard``).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llmlatent.latents.format import STORAGE, STORE_FILE, LatentStoreError, read_config, shard_dir
from llmlatent.latents.shards import disk_size, shard_range

# Arrow frames each shard's columns and every shard carries small JSON files: measured 0.6-0.7% above the raw
# latent bytes at the embedded model's width (130 and 600 prompts, tests/test_latents_space.py); 5% + 1 MiB is safe.
OVERHEAD = 1.05
SLACK_BYTES = 1 << 20


def latent_bytes(config: dict, rows: int) -> int:
    """Return the raw bytes of ``rows`` prompts' latents in a store of ``config`` (layers × width × value size)."""
    return rows * int(config["n_layers"]) * int(config["hidden_size"]) * np.dtype(STORAGE[config["dtype"]]).itemsize


def rows_to_write(path: Path, config: dict) -> int:
    """Return how many prompts of ``config`` are not yet in a finished shard at ``path`` (all, for a new store).

    Only a store of the same prompts and storage dtype counts as begun; anything else is refused later by
    :func:`llmlatent.latents.format.open_or_create` with its own message.
    """
    if not (path / STORE_FILE).is_file():
        return int(config["n_prompts"])
    try:
        existing = read_config(path)
    except LatentStoreError:  # repaired or refused later, with its own message
        return int(config["n_prompts"])
    if (existing["prompts_sha256"], existing["dtype"]) != (config["prompts_sha256"], config["dtype"]):
        return int(config["n_prompts"])
    done = 0
    for k in range(existing["n_shards"]):
        if shard_dir(path, k).exists():
            start, stop = shard_range(existing, k)
            done += stop - start
    return int(config["n_prompts"]) - done


def _existing_parent(path: Path) -> Path:
    """Return ``path`` or its nearest existing parent (the disk the store will be written on)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(path: Path, config: dict) -> None:
    """Return None when the disk of ``path`` has room for the prompts of ``config`` not yet stored there; else
    raise LatentStoreError (one line: the store, the space needed, the space free and the fix)."""
    rows = rows_to_write(path, config)
    need = int(latent_bytes(config, rows) * OVERHEAD) + SLACK_BYTES if rows else 0
    where = _existing_parent(path)
    free = shutil.disk_usage(where).free
    if need > free:
        per = f"{config['n_layers']} layers × {config['hidden_size']} × {np.dtype(STORAGE[config['dtype']]).itemsize}"
        raise LatentStoreError(
            f"not enough free space for the latent store {path}: {rows} prompts × {per} bytes ({config['dtype']}) "
            f"need about {need / 1e6:.1f} MB, but {where} has {free / 1e6:.1f} MB free; free some space "
            f"(df -h {where}), or collect into a folder on another disk"
        )


@contextlib.contextmanager
def disk_full(path: Path, config: dict) -> Iterator[None]:
    """Yield; a full disk while the store at ``path`` is written becomes one LatentStoreError line (what was
    written, what the store needs, the fix)."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        written = disk_size(path) if path.is_dir() else 0
        total = latent_bytes(config, int(config["n_prompts"]))
        raise LatentStoreError(
            f"no space left on the device of the latent store {path} after writing {written / 1e6:.1f} MB of about "
            f"{total / 1e6:.1f} MB (finished shards are kept, the unfinished one was removed); free some space "
            f"(df -h {_existing_parent(path)}) and rerun the same command to resume, or collect into another disk"
        ) from exc
