"""Last-token latents after every block, cached on disk as a Hugging Face dataset (Arrow); resumable.

A store is a folder::

    store.json                  model fingerprint, storage dtype, prompt-set hash, shard size, prompt-set meta
    shards/00000/               one ``datasets.Dataset.save_to_disk`` folder per shard of prompts:
        data-00000-of-00001.arrow, dataset_info.json, state.json,
        shard.json              its rows and the size + sha256 of every file above (written last)
    shards/.tmp-00003-…/        a shard being written: never read, removed when its shard is redone

Shard ``k`` holds prompts ``[k·S, (k+1)·S)`` in prompt order and appears only through an atomic
rename of its finished temporary folder, so a killed run leaves no shard that reads as valid and
a rerun computes only the missing shards. Rank ``r`` of ``W`` (``RANK``/``WORLD_SIZE`` under
torchrun) computes the shards with ``k % W == r``; :func:`load` assembles the finished shards in
prompt order, so the dataset is the same however many processes wrote it. Each row holds the
prompt's metadata columns and ``latents`` (``Array2D [layers, hidden]``; bfloat16 is stored as its
uint16 bit pattern since Arrow has no bfloat16). Only Arrow and JSON are written, never pickle.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from llmlatent import capture, checks
from llmlatent.adapter import Fingerprint, LoadedHead
from llmlatent.errors import UsageError
from llmlatent.latents.format import (
    STORAGE,
    FingerprintMismatch,
    LatentStoreError,
    check_dtype,
    describe,
    features,
    make_config,
    open_or_create,
    prompt_frame,
    read_config,
    shard_dir,
)
from llmlatent.latents.shards import disk_size, fill_shards, shard_problem, shard_range, to_storage
from llmlatent.latents.space import check_free_space, disk_full
from llmlatent.tasks import PromptSet
from llmlatent.tokens import set_columns

if TYPE_CHECKING:
    from llmlatent.model import Model

log = logging.getLogger(__name__)


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"rank {rank} is not within a world of {world} processes (RANK/WORLD_SIZE)")
    return rank, world


def collect(
    model: Model,
    prompts: PromptSet,
    path: str | os.PathLike,
    *,
    batch_size: int = 16,
    dtype: str | torch.dtype = "float16",
    shard_size: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    repair: bool = False,
) -> LatentStore | None:
    """Return the :class:`LatentStore` at ``path`` after collecting every prompt's last-token latents into it.

    ``prompts`` is a :class:`llmlatent.tasks.PromptSet` (every column of its frame is stored; a DataFrame
    becomes one with ``PromptSet(frame)``). Finished shards are kept, so rerunning after a crash computes only
    the missing ones. ``dtype`` is the storage dtype (float16, bfloat16, float32); ``shard_size``
    (prompts per shard, default 64; a resumed store keeps its own). With ``world_size`` > 1 (default
    from ``RANK``/``WORLD_SIZE``) this process computes only shards ``k % world_size == rank``; it
    waits at a barrier if a ``torch.distributed`` group is initialised, and returns None if other
    ranks' shards are still missing (:func:`load` the path once all have finished). Each shard is
    computed under a claim (a lock file), so a second process on the same store works on other shards
    or waits. ``repair=True`` rebuilds an unreadable store.json, keeping every shard that still verifies.
    """
    dtype = check_dtype(dtype)
    checks.count(batch_size, "batch_size")
    checks.count(shard_size, "shard_size", optional=True)  # before the fingerprint's hash, in a second
    frame, meta = prompt_frame(prompts)
    rank, world = _rank_world(rank, world_size)
    path = Path(path)
    wanted = make_config(model, frame, meta, dtype)
    check_free_space(path, wanted)  # the size is known now: refuse before anything is created
    with disk_full(path, wanted):  # store.json itself may not fit
        config = open_or_create(path, wanted, shard_size, repair=repair)
    mine = [k for k in range(config["n_shards"]) if k % world == rank]

    def forward(start: int, stop: int, bar: tqdm) -> np.ndarray:
        part = frame["prompt"].iloc[start:stop].tolist()
        out = np.empty((stop - start, config["n_layers"], config["hidden_size"]), dtype=STORAGE[dtype])
        for idx in capture.length_batches(model, part, batch_size):  # similar lengths together (same results)
            latents, _ = capture.forward_last(model, [part[i] for i in idx])
            out[idx] = to_storage(latents, dtype)
            bar.update(len(idx))
        return out

    desc = "latents" if world == 1 else f"latents (rank {rank}/{world})"
    with disk_full(path, config):  # finished shards are kept, the unfinished one is removed
        fill_shards(path, config, frame, mine, forward, desc, progress)
    return _after_rank(path, config, rank, world)


def write_latents(
    source: Model | LoadedHead | Fingerprint,
    prompts: PromptSet,
    latents: torch.Tensor,
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    shard_size: int | None = None,
    progress: bool = True,
) -> LatentStore:
    """Return the :class:`LatentStore` at ``path`` after writing given ``latents`` [prompts, layers, hidden] into it.

    The store :func:`collect` would write, without a forward pass: ``source`` (a Model, a LoadedHead or a
    Fingerprint) names the model the latents came from, ``prompts`` their rows in order. Finished shards
    are kept, so rerunning after a crash writes only the missing ones.
    """
    dtype = check_dtype(dtype)
    checks.count(shard_size, "shard_size", optional=True)
    frame, meta = prompt_frame(prompts, "write_latents")
    fingerprint = source if isinstance(source, Fingerprint) else source.fingerprint()
    want = (len(frame), fingerprint.n_layers, fingerprint.hidden_size)
    if tuple(latents.shape) != want:
        raise LatentStoreError(f"latents of shape {tuple(latents.shape)} do not fit {want} (prompts, layers, hidden)")
    stored = to_storage(latents, dtype)  # float16's range is checked before anything is written
    path = Path(path)
    wanted = make_config(fingerprint, frame, meta, dtype)
    check_free_space(path, wanted)
    with disk_full(path, wanted):
        config = open_or_create(path, wanted, shard_size)

    def take(start: int, stop: int, bar: tqdm) -> np.ndarray:
        bar.update(stop - start)
        return stored[start:stop]

    with disk_full(path, config):
        fill_shards(path, config, frame, list(range(config["n_shards"])), take, "write latents", progress)
    # every shard was hashed as it was written or verified by fill_shards: no second read of the store
    return load(path, verify=False)


def _after_rank(path: Path, config: dict, rank: int, world: int) -> LatentStore | None:
    """Return the finished store once this rank is done (after a barrier under torch.distributed), else None."""
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    done = sum(shard_dir(path, k).exists() for k in range(config["n_shards"]))
    if done < config["n_shards"]:
        log.info("rank %d finished its shards; %d of %d shards of %s are done", rank, done, config["n_shards"], path)
        return None
    return load(path)


# ---------------------------------------------------------------- reading


class LatentStore:
    """A finished latent store, memory-mapped: ``dataset`` (one row per prompt), metadata, float32 latents."""

    def __init__(self, path: Path, config: dict, shards: list, dataset: object) -> None:
        self.path = path
        self.config = config
        self.dataset = dataset
        self._shards = shards
        self._arrays: list[np.ndarray] | None = None
        self._prompts: pd.DataFrame | None = None

    def __len__(self) -> int:
        return int(self.config["n_prompts"])

    def __repr__(self) -> str:
        shape = f"{len(self)} prompts × {self.n_layers} layers × {self.hidden_size}"
        return f"LatentStore({str(self.path)!r}, {shape}, {self.dtype}, {self.fingerprint.model})"

    @property
    def n_layers(self) -> int:
        """Return the number of blocks (latents per prompt)."""
        return int(self.config["n_layers"])

    @property
    def hidden_size(self) -> int:
        """Return the residual-stream width."""
        return int(self.config["hidden_size"])

    @property
    def dtype(self) -> str:
        """Return the storage dtype's name."""
        return str(self.config["dtype"])

    @property
    def fingerprint(self) -> Fingerprint:
        """Return the collecting model's :class:`~llmlatent.adapter.Fingerprint` (as ``Model.fingerprint()``)."""
        return Fingerprint.of(self.config["fingerprint"])

    @property
    def meta(self) -> dict:
        """Return the prompt set's metadata (task, languages, seed, …)."""
        return dict(self.config["meta"])

    @property
    def prompts(self) -> pd.DataFrame:
        """Return the prompts' metadata, one row per prompt in order (token-id sets as lists or None)."""
        if self._prompts is None:
            import pyarrow as pa

            table = pa.concat_tables([ds.data.table.drop_columns(["latents"]) for ds in self._shards])
            frame = table.to_pandas()
            for column in set_columns(frame.columns).values():
                if column in frame:
                    frame[column] = [None if v is None else [int(x) for x in v] for v in frame[column]]
            self._prompts = frame
        return self._prompts.copy()

    def prompt_set(self) -> PromptSet:
        """Return the stored prompts as a PromptSet (meta from store.json; drop counts and notes where recorded)."""
        meta = self.meta
        return PromptSet(self.prompts, dict(meta.get("dropped") or {}), meta, list(meta.get("notes") or []))

    def _chunks(self) -> list[np.ndarray]:
        if self._arrays is None:
            import pyarrow as pa

            arrays = []
            for ds in self._shards:
                for chunk in ds.data.table.column("latents").chunks:
                    storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
                    flat = storage.flatten().flatten().to_numpy(zero_copy_only=True)
                    arrays.append(flat.reshape(-1, self.n_layers, self.hidden_size))
            self._arrays = arrays
        return self._arrays

    def _to_float(self, part: np.ndarray) -> torch.Tensor:
        if self.dtype == "bfloat16":
            return torch.from_numpy(np.array(part, copy=True).view(np.int16)).view(torch.bfloat16).float()
        return torch.from_numpy(part.astype(np.float32))

    def latents(self, layer: int | None = None, rows: slice | None = None) -> torch.Tensor:
        """Return float32 latents: [N, hidden] at one ``layer`` (negative: from the end), else [N, layers, hidden].

        ``rows`` (a slice of prompts, step 1) reads only part of the store.
        """
        if layer is not None:
            if not -self.n_layers <= int(layer) < self.n_layers:
                raise UsageError(f"layer {layer} is out of range for {self.n_layers} layers (0 … {self.n_layers - 1})")
            layer = int(layer) % self.n_layers
        start, stop, step = (rows or slice(None)).indices(len(self))
        if step != 1:
            raise UsageError("rows must be a contiguous slice")
        parts, offset = [], 0
        for arr in self._chunks():
            lo, hi = max(start, offset), min(stop, offset + len(arr))
            if lo < hi:
                part = arr[lo - offset : hi - offset]
                parts.append(self._to_float(part if layer is None else part[:, layer]))
            offset += len(arr)
        if not parts:
            shape = (0, self.hidden_size) if layer is not None else (0, self.n_layers, self.hidden_size)
            return torch.empty(shape)
        return torch.cat(parts)

    def check(self, given: Fingerprint) -> None:
        """Return None if ``given`` identifies the model these latents came from (:meth:`Fingerprint.same_model`).

        ``given`` is a :class:`~llmlatent.adapter.Fingerprint` (``model.fingerprint()``, ``head.fingerprint()``;
        :func:`llmlatent.lens.last_token.from_latents` checks any lens source); raise FingerprintMismatch when it
        names other weights, and a one-line UsageError for anything but a Fingerprint.
        """
        if not isinstance(given, Fingerprint):
            raise UsageError(
                f"LatentStore.check takes a Fingerprint (model.fingerprint()), got a {type(given).__name__}"
            )
        want = self.fingerprint
        if want.same_model(given):
            return
        problems = []
        if given.unembedding_sha256 != want.unembedding_sha256:
            problems.append(f"unembedding sha256 {given.unembedding_sha256} ≠ {want.unembedding_sha256}")
        if given.hidden_size != want.hidden_size:
            problems.append(f"hidden size {given.hidden_size} ≠ {want.hidden_size}")
        if given.n_layers != want.n_layers:
            problems.append(f"{given.n_layers} layers ≠ {want.n_layers}")
        raise FingerprintMismatch(
            f"fingerprint mismatch: the latent store {self.path} was collected with {describe(want)}, "
            f"but {given.model} differs ({'; '.join(problems)}); use that model's unembedding: "
            f"model.load_unembedding({want.model!r})"
        )

    def size_bytes(self) -> int:
        """Return the store's size on disk in bytes."""
        return disk_size(self.path)


def load(path: str | os.PathLike, *, format: str | None = "torch", verify: bool = True) -> LatentStore:
    """Return the finished :class:`LatentStore` at ``path`` (memory-mapped; ``dataset`` formatted as ``format``).

    ``verify`` checks every shard file's sha256 (reads the store once); sizes are always checked.
    """
    import datasets

    path = Path(path)
    config = read_config(path)
    n = config["n_shards"]
    done = [k for k in range(n) if shard_dir(path, k).exists()]
    if len(done) < n:
        raise LatentStoreError(
            f"incomplete latent store {path}: {len(done)} of {n} shards finished; "
            "rerun the same collect/cache command to resume"
        )
    shards = []
    for k in range(n):
        problem = shard_problem(path, config, k, hashes=verify)
        if problem is None:
            try:
                ds = datasets.load_from_disk(str(shard_dir(path, k)), keep_in_memory=False)
            except Exception as exc:  # noqa: BLE001 - any reader failure means the shard is unusable
                problem = f"it cannot be read ({type(exc).__name__}: {exc})"
            else:
                start, stop = shard_range(config, k)
                if len(ds) != stop - start or ds.features != features(config):
                    problem = "its rows or columns do not match store.json"
        if problem:
            raise LatentStoreError(
                f"corrupt shard {k} in latent store {path}: {problem}; delete {shard_dir(path, k)} and rerun the "
                "same collect/cache command to recompute it"
            )
        shards.append(ds)
    dataset = shards[0] if len(shards) == 1 else datasets.concatenate_datasets(shards)
    if format:
        dataset = dataset.with_format(format)
    return LatentStore(path, config, shards, dataset)
