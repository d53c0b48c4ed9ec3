"""Shards of a latent store: their prompt ranges, verification, claims, crash-safe writing, and the store summary.

Shard ``k`` appears only through an atomic rename of its finished temporary folder (see
:mod:`llmlatent.latents`); its shard.json records the size and sha256 of every file, checked on reading.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from llmlatent.atomic import file_sha256, staged_dir
from llmlatent.latents.format import SHARD_FILE, STORAGE, features, read_config, records, shard_dir, write_json


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
