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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from llmlatent.atomic import file_sha256, staged_dir
from llmlatent.latents.format import (
    SHARD_FILE,
    STORAGE,
    LatentStoreError,
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


def write_shard(path: Path, config: dict, k: int, frame: pd.DataFrame, latents: np.ndarray) -> None:
    """Write shard ``k`` into a temporary folder, fsync it, and rename it into place (atomic)."""
    from datasets import Dataset

    start, stop = shard_range(config, k)
    # an existing final folder is an invalid leftover (found by the caller, who holds the shard's claim)
    with staged_dir(shard_dir(path, k), f".tmp-{k:05d}-") as tmp:
        data = records(frame.iloc[start:stop], config["columns"])
        data["latents"] = latents
        with quiet_datasets():
            Dataset.from_dict(data, features=features(config)).save_to_disk(str(tmp))
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
    """
    todo = [k for k in shards if not finished(path, config, k)]
    if len(todo) < len(shards):
        log.info(
            "resuming %s: %d of this rank's %d shards already finished", path, len(shards) - len(todo), len(shards)
        )
    total = sum(shard_range(config, k)[1] - shard_range(config, k)[0] for k in todo)
    bar = tqdm(total=total, desc=desc, unit="prompt", disable=not progress)
    for wait in (False, True):
        busy = []
        for k in todo:
            with claim(path, k, wait=wait) as mine_now:
                if mine_now:
                    _write_one(path, config, k, frame, make, bar)
                else:
                    busy.append(k)
        if busy:
            log.info("%d shard(s) of %s are being computed by another process; waiting for them", len(busy), path)
        todo = busy
    bar.close()


def _write_one(path: Path, config: dict, k: int, frame: pd.DataFrame, make: Callable, bar: tqdm) -> None:
    """Write shard ``k`` from ``make``'s latents unless another process wrote it meanwhile (we hold its claim)."""
    start, stop = shard_range(config, k)
    if finished(path, config, k):  # another process wrote it while we waited
        bar.update(stop - start)
        return
    for stale in (path / "shards").glob(f".tmp-{k:05d}-*"):  # a killed run's; safe: we hold the claim
        shutil.rmtree(stale, ignore_errors=True)
    write_shard(path, config, k, frame, make(start, stop, bar))
    log.info("computed shard %d of %s (prompts %d-%d) in process %d", k, path, start, stop - 1, os.getpid())


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
