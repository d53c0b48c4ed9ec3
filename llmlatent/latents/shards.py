"""Shards of a latent store: their prompt ranges, verification, claims, crash-safe writing, and the store summary.

Shard ``k`` appears only through an atomic rename of its finished temporary folder (see
:mod:`llmlatent.latents`); its shard.json records the size and sha256 of every file, checked on reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from llmlatent.atomic import file_sha256, make_temp_dir, replace_dir
from llmlatent.latents.format import (
    SHARD_FILE,
    STORAGE,
    LatentStoreError,
    check_shard_values,
    features,
    read_config,
    records,
    shard_dir,
    write_json,
)

log = logging.getLogger(__name__)
FLOAT16_MAX = 65504.0


def shard_range(config: dict, k: int) -> tuple[int, int]:
    """Return the prompt rows [start, stop) of shard ``k``."""
    start = k * config["shard_size"]
    return start, min(config["n_prompts"], start + config["shard_size"])


def shard_problem(path: Path, config: dict, k: int, *, hashes: bool = True) -> str | None:
    """Return why finished shard ``k`` is invalid, or None when it is valid."""
    folder = shard_dir(path, k)
    try:
        info = json.loads((folder / SHARD_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{SHARD_FILE} is missing"
    except (ValueError, UnicodeDecodeError):
        return f"{SHARD_FILE} is not valid JSON"
    start, stop = shard_range(config, k)
    if (info.get("prompts_sha256"), info.get("start"), info.get("stop")) != (config["prompts_sha256"], start, stop):
        return "it belongs to another prompt set or shard layout"
    for name, want in info.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != want["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, expected {want['bytes']}"
        if hashes and file_sha256(file) != want["sha256"]:
            return f"{name} does not match its sha256"
    return None


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Yield with the datasets library's progress bars off (restored afterwards)."""
    import datasets

    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def claim(path: Path, k: int, *, wait: bool) -> Iterator[bool]:
    """Yield True while this process holds shard ``k``'s claim (a lock file), False if another process holds it.

    Two ``cache`` processes on one store thus never compute the same shard: the second one skips claimed
    shards (``wait=False``) and comes back to them later (``wait=True`` blocks until the holder finishes
    or dies; the operating system releases the lock of a killed process).
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(path / "shards" / f".claim-{k:05d}.lock"))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def stage_shard(path: Path, config: dict, k: int, frame: pd.DataFrame, latents: np.ndarray) -> Path:
    """Return a new temporary folder holding shard ``k``'s dataset (removed again if writing it fails)."""
    start, stop = shard_range(config, k)
    tmp = make_temp_dir(f".tmp-{k:05d}-", path / "shards")
    try:
        data = records(frame.iloc[start:stop], config["columns"])
        data["latents"] = latents
        with quiet_datasets():
            shard_dataset(data, features(config), shard_fingerprint(config, k)).save_to_disk(str(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def finish_shard(path: Path, config: dict, k: int, tmp: Path) -> None:
    """Fsync and hash the files of staged shard ``k``, write its shard.json and rename it into place (atomic).

    An existing final folder is an invalid leftover (found by the caller, who holds the shard's claim);
    ``tmp`` is removed if anything fails.
    """
    start, stop = shard_range(config, k)
    try:
        files = {}
        for file in sorted(tmp.iterdir()):
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
            files[file.name] = {"bytes": file.stat().st_size, "sha256": file_sha256(file)}
        info = {
            "shard": k,
            "start": start,
            "stop": stop,
            "rows": stop - start,
            "prompts_sha256": config["prompts_sha256"],
            "files": files,
        }
        write_json(tmp / SHARD_FILE, info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, shard_dir(path, k))


class Finisher:
    """Finishes staged shards (:func:`finish_shard`: fsync, sha256, rename) on one worker thread, one at a time,
    while the caller computes and stages the next shard: hashing releases the GIL, so on two cores it is hidden.

    ``submit`` first waits for the shard before (at most one is pending) and then hands over the new one with
    its held claim; the claim is released by the caller's thread once the shard is finished (file locks are
    per thread). Leaving the block waits for the pending shard, also after an error: finished shards are kept.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmlatent-shard")
        self._pending: tuple[contextlib.ExitStack, Future] | None = None

    def submit(self, held: contextlib.ExitStack, path: Path, config: dict, k: int, tmp: Path) -> None:
        """Return None after waiting for the pending shard and starting :func:`finish_shard` of staged ``tmp``
        under ``held``; if the pending shard failed, ``tmp`` is removed and that error raised."""
        try:
            self.wait()
            self._pending = (held, self._pool.submit(finish_shard, path, config, k, tmp))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            held.close()
            raise

    def wait(self) -> None:
        """Return None once the pending shard is finished and its claim released (its error re-raised here)."""
        if self._pending is None:
            return
        held, future = self._pending
        self._pending = None
        try:
            future.result()
        finally:
            held.close()

    def __enter__(self) -> Finisher:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()


def shard_fingerprint(config: dict, k: int) -> str:
    """Return the ``datasets`` fingerprint of shard ``k``: a digest of what names its content (store, rows, dtype).

    ``datasets`` would otherwise hash every byte of the table through dill (a quarter of an import's time);
    the fingerprint only keys its own cache of ``map`` results, kept inside the shard folder, which a rewrite
    of the shard replaces as a whole. The file sha256s in shard.json stay the check of the content.
    """
    start, stop = shard_range(config, k)
    name = [config["fingerprint"], config["prompts_sha256"], config["dtype"], start, stop]
    return hashlib.sha256(json.dumps(name, sort_keys=True).encode()).hexdigest()[:16]


def shard_dataset(data: dict, features: object, fingerprint: str) -> object:
    """Return the ``datasets.Dataset`` of one shard's columns, the latents wrapped without a copy.

    Equal to ``Dataset.from_dict(data, features=features)`` (tested), which converts the float array
    through per-row sequences and fingerprints the table; here the flat latents buffer becomes the
    values of two nested list arrays (offsets every ``hidden`` and every ``layers`` values: Array2D's
    storage) and the fingerprint is given.
    """
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo

    schema = features.arrow_schema
    columns = []
    for name in features:
        if name != "latents":
            columns.append(pa.array(data[name], type=schema.field(name).type))
            continue
        check_shard_values(*data[name].shape)  # before any copy
        latents = np.ascontiguousarray(data[name])
        rows, layers, hidden = latents.shape
        values = pa.array(latents.reshape(-1))
        inner = pa.ListArray.from_arrays(pa.array(np.arange(0, len(values) + 1, hidden, dtype=np.int32)), values)
        outer = pa.ListArray.from_arrays(pa.array(np.arange(0, rows * layers + 1, layers, dtype=np.int32)), inner)
        columns.append(pa.ExtensionArray.from_storage(schema.field(name).type, outer))
    table = pa.Table.from_arrays(columns, schema=schema)
    return Dataset(table, info=DatasetInfo(features=features), fingerprint=fingerprint)


def to_storage(latents: torch.Tensor, dtype: str) -> np.ndarray:
    """Return latents as the numpy array a shard stores for ``dtype`` (float16 refuses values beyond its range)."""
    x = latents.detach().to("cpu", torch.float32)
    if dtype == "float16":
        big = float(x.abs().max()) if x.numel() else 0.0
        if big > FLOAT16_MAX:
            raise LatentStoreError(
                f"latents reach |x| = {big:.4g}, beyond float16's range ({FLOAT16_MAX:.0f}); "
                "collect with dtype='bfloat16' or 'float32'"
            )
        return x.half().numpy()
    if dtype == "bfloat16":
        return x.bfloat16().view(torch.int16).numpy().view(np.uint16)
    return x.numpy()


def fill_shards(
    path: Path, config: dict, frame: pd.DataFrame, shards: list[int], make: Callable, desc: str, progress: bool = True
) -> None:
    """Write every unfinished shard of ``shards``, each under its claim, with ``make(start, stop, bar)``'s latents.

    First pass: shards no other process has claimed; second pass: wait for the claimed ones (their holder may die).
    Shard k is finished (hashed, renamed) by a :class:`Finisher` while shard k + 1 is computed and staged.
    """
    todo = [k for k in shards if not finished(path, config, k)]
    if len(todo) < len(shards):
        log.info(
            "resuming %s: %d of this rank's %d shards already finished", path, len(shards) - len(todo), len(shards)
        )
    total = sum(shard_range(config, k)[1] - shard_range(config, k)[0] for k in todo)
    bar = tqdm(total=total, desc=desc, unit="prompt", disable=not progress)
    with Finisher() as finisher:
        for wait in (False, True):
            busy = []
            for k in todo:
                held = contextlib.ExitStack()
                if not held.enter_context(claim(path, k, wait=wait)):
                    held.close()
                    busy.append(k)
                    continue
                try:
                    tmp = _stage_one(path, config, k, frame, make, bar)
                except BaseException:
                    held.close()
                    raise
                if tmp is None:
                    held.close()
                else:
                    finisher.submit(held, path, config, k, tmp)
            finisher.wait()  # before the second pass looks at the shards others hold
            if busy:
                log.info("%d shard(s) of %s are being computed by another process; waiting for them", len(busy), path)
            todo = busy
    bar.close()


def _stage_one(path: Path, config: dict, k: int, frame: pd.DataFrame, make: Callable, bar: tqdm) -> Path | None:
    """Return shard ``k`` staged from ``make``'s latents, or None if another process wrote it meanwhile (we hold
    its claim)."""
    start, stop = shard_range(config, k)
    if finished(path, config, k):  # another process wrote it while we waited
        bar.update(stop - start)
        return None
    for stale in (path / "shards").glob(f".tmp-{k:05d}-*"):  # a killed run's; safe: we hold the claim
        shutil.rmtree(stale, ignore_errors=True)
    tmp = stage_shard(path, config, k, frame, make(start, stop, bar))
    log.info("computed shard %d of %s (prompts %d-%d) in process %d", k, path, start, stop - 1, os.getpid())
    return tmp


def finished(path: Path, config: dict, k: int) -> bool:
    """Return True when shard ``k`` exists and verifies (an invalid one is logged and will be recomputed)."""
    if not shard_dir(path, k).exists():
        return False
    problem = shard_problem(path, config, k)
    if problem is not None:
        log.warning("shard %d of %s is invalid (%s); recomputing it", k, path, problem)
    return problem is None


def store_digest(path: str | os.PathLike) -> str:
    """Return a sha256 over a store's store.json and every shard.json (which hold each file's sha256): its content."""
    path = Path(path)
    config = read_config(path)
    digest = hashlib.sha256((path / "store.json").read_bytes())
    for k in range(config["n_shards"]):
        info = shard_dir(path, k) / SHARD_FILE
        digest.update(info.read_bytes() if info.is_file() else b"missing")
    return digest.hexdigest()


def disk_size(path: Path) -> int:
    """Return the bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def info(path: str | os.PathLike, *, verify: bool = True) -> dict:
    """Return a summary of the store at ``path``: model, counts, layers, dtype, size on disk, whether it is complete.

    Every finished shard is checked as :func:`load` checks it: its shard.json, every file's size and,
    with ``verify`` (default), every file's sha256 (reads the store once). ``complete`` is True only
    when all shards exist and pass; ``problems`` maps each failing shard to the reason; ``verified``
    says how far the check went.
    """
    path = Path(path)
    config = read_config(path)
    problems = {}
    done = 0
    for k in range(config["n_shards"]):
        if not shard_dir(path, k).exists():
            continue
        done += 1
        problem = shard_problem(path, config, k, hashes=verify)
        if problem is not None:
            problems[str(k)] = f"{problem}; rerun the same cache command to recompute it"
    per_prompt = config["n_layers"] * config["hidden_size"] * np.dtype(STORAGE[config["dtype"]]).itemsize
    size = disk_size(path)
    return {
        "path": str(path),
        "model": config["fingerprint"]["model"],
        "fingerprint": config["fingerprint"],
        "n_prompts": config["n_prompts"],
        "n_layers": config["n_layers"],
        "hidden_size": config["hidden_size"],
        "dtype": config["dtype"],
        "shards_done": done,
        "n_shards": config["n_shards"],
        "complete": done == config["n_shards"] and not problems,
        "verified": "shard.json, sizes and sha256 of every file"
        if verify
        else "shard.json and sizes only (sha256 not checked)",
        "problems": problems,
        "latent_bytes_per_prompt": per_prompt,
        "size_bytes": size,
        "meta": config["meta"],
    }
