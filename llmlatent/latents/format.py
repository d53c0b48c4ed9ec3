"""On-disk format of a latent store: store.json, crash-safe Arrow shards (atomic rename, sha256-checked).

See :mod:`llmlatent.latents` for the layout; this module only reads, writes and verifies it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from llmlatent import checks
from llmlatent.adapter import Fingerprint
from llmlatent.atomic import atomic_file, check_output_dir
from llmlatent.errors import LlmlatentError, UsageError
from llmlatent.tasks import PromptSet, check_prompts
from llmlatent.tokens import set_columns

if TYPE_CHECKING:
    from llmlatent.model import Model

log = logging.getLogger(__name__)

FORMAT = "llmlatent-latents"
VERSION = 1
STORE_FILE = "store.json"
SHARD_FILE = "shard.json"
LOCK_FILE = "store.lock"
DEFAULT_SHARD_SIZE = 64
# storage dtype -> numpy/Arrow value type of the ``latents`` column (Arrow has no bfloat16: its bit pattern)
STORAGE = {"float16": "float16", "bfloat16": "uint16", "float32": "float32"}


class LatentStoreError(LlmlatentError, ValueError):
    """A latent store is missing, incomplete, corrupt or does not fit the request; the message says what to do."""


class FingerprintMismatch(LatentStoreError):
    """The latents were collected with another model than the one given."""


def check_dtype(dtype: str | torch.dtype) -> str:
    """Return the storage dtype's name (float16, bfloat16 or float32), or raise LatentStoreError."""
    name = str(dtype).removeprefix("torch.")
    if name not in STORAGE:
        raise LatentStoreError(f"storage dtype must be one of float16, bfloat16, float32 (got {dtype!r})")
    return name


# ---------------------------------------------------------------- metadata columns and store config


def prompt_frame(prompts: PromptSet, where: str = "latents.collect") -> tuple[pd.DataFrame, dict]:
    """Return (the prompt frame with a fresh index, the prompt set's JSON-able meta) of a PromptSet.

    Anything else is refused with one line naming ``where`` (the function the user called).
    """
    frame = check_prompts(prompts, where).df
    if "prompt" not in frame:
        raise UsageError(f"{where}: the prompt set has no 'prompt' column")
    if len(frame) == 0:
        raise UsageError("no prompts to collect")
    if "latents" in frame:
        raise UsageError("the prompt frame must not have a 'latents' column (that name holds the latents)")
    meta = json.loads(json.dumps(dict(prompts.meta or {}), default=str))
    return frame.reset_index(drop=True), meta


def column_kind(frame: pd.DataFrame, column: str) -> str:
    """Return how a metadata column is stored: ids (token-id list or None), bool, int64, float64 or string."""
    if column in set_columns([column]).values():
        return "ids"
    dtype = frame[column].dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int64"
    if pd.api.types.is_float_dtype(dtype):
        return "float64"
    return "string"


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def records(frame: pd.DataFrame, kinds: dict[str, str]) -> dict[str, list]:
    """Return the frame's columns as plain Python lists converted to their stored kinds."""
    convert: dict[str, Callable[[Any], Any]] = {
        "ids": lambda v: None if _missing(v) else [int(x) for x in v],
        "bool": bool,
        "int64": int,
        "float64": float,
        "string": lambda v: None if _missing(v) else str(v),
    }
    return {c: [convert[k](v) for v in frame[c].tolist()] for c, k in kinds.items()}


def features(config: dict) -> object:
    """Return the ``datasets.Features`` of a store's shards (metadata columns + ``latents`` Array2D)."""
    from datasets import Array2D, Features, List, Value

    value = {
        "ids": List(Value("int64")),
        "bool": Value("bool"),
        "int64": Value("int64"),
        "float64": Value("float64"),
        "string": Value("string"),
    }
    features = {c: value[k] for c, k in config["columns"].items()}
    features["latents"] = Array2D(shape=(config["n_layers"], config["hidden_size"]), dtype=STORAGE[config["dtype"]])
    return Features(features)


def make_config(model: Model | Fingerprint, frame: pd.DataFrame, meta: dict, dtype: str) -> dict:
    """Return a new store's store.json content (without shard size) for a model (or its fingerprint), prompts and
    storage dtype."""
    kinds = {c: column_kind(frame, c) for c in frame.columns}
    blob = json.dumps({"columns": kinds, "rows": records(frame, kinds)}, sort_keys=True, ensure_ascii=False)
    fingerprint = (model if isinstance(model, Fingerprint) else model.fingerprint()).to_dict()
    return {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": fingerprint,
        "n_layers": int(fingerprint["n_layers"]),
        "hidden_size": int(fingerprint["hidden_size"]),
        "dtype": dtype,
        "model_dtype": str(getattr(getattr(model, "hf", None), "dtype", "")) or None,  # the model's run dtype
        "n_prompts": len(frame),
        "prompts_sha256": hashlib.sha256(blob.encode()).hexdigest(),
        "columns": kinds,
        "meta": meta,
    }


def mismatch_message(path: Path, existing: Mapping, config: Mapping) -> str:
    """Return why a store's model differs from the one resuming it: the same model in another dtype, or another."""
    old, new = Fingerprint.of(existing["fingerprint"]), Fingerprint.of(config["fingerprint"])
    same_shape = (old.model, old.n_layers, old.hidden_size) == (new.model, new.n_layers, new.hidden_size)
    was, now = existing.get("model_dtype"), config.get("model_dtype")
    if same_shape and was and now and was != now:
        return (
            f"{path} holds latents of {old.model} run in {was}, but the model now runs in {now} (its head's hash "
            f"differs: {old.unembedding_sha256[:12]}… vs {new.unembedding_sha256[:12]}…); load the same model or "
            f"folder with --dtype {was.removeprefix('torch.')} to resume, or collect into another folder"
        )
    return (
        f"fingerprint mismatch: {path} holds latents of {describe(existing['fingerprint'])}, not of "
        f"{describe(config['fingerprint'])}; collect into another folder"
    )


def describe(fp: Mapping) -> str:
    """Return a one-line description of a model fingerprint (a Fingerprint or its stored dict)."""
    return (
        f"{fp.get('model')} (unembedding sha256 {fp.get('unembedding_sha256')}, {fp.get('n_layers')} layers, "
        f"hidden {fp.get('hidden_size')})"
    )


def write_json(path: Path, content: dict) -> None:
    """Write JSON to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1, ensure_ascii=False), encoding="utf-8")


REPAIR_HINT = (
    "rerun the same cache command with --repair (latents.collect(..., repair=True)): store.json is rebuilt "
    "from the prompts and model, and every finished shard whose shard.json and sha256 still match is kept"
)


def read_config(path: Path) -> dict:
    """Return the store.json content of the store at ``path``, or raise LatentStoreError when it is not a store."""
    store_file = path / STORE_FILE
    if not store_file.is_file():
        raise LatentStoreError(
            f"{path} is not a latent store (no {STORE_FILE}); "
            "create one with latents.collect or `python -m llmlatent cache`"
        )
    try:
        config = json.loads(store_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LatentStoreError(f"{STORE_FILE} of the latent store {path} is not valid JSON; {REPAIR_HINT}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise LatentStoreError(f"{path} is not a latent store: {STORE_FILE} is not an llmlatent latent-store file")
    if config.get("version") != VERSION:
        raise LatentStoreError(
            f"{path} is a latent store of format version {config.get('version')}; this llmlatent reads {VERSION}"
        )
    keys = (
        "fingerprint",
        "n_layers",
        "hidden_size",
        "dtype",
        "n_prompts",
        "prompts_sha256",
        "columns",
        "shard_size",
        "n_shards",
    )
    if not all(k in config for k in keys):
        raise LatentStoreError(
            f"{STORE_FILE} of the latent store {path} lacks some of {', '.join(keys)}; {REPAIR_HINT}"
        )
    return config


def check_store_dir(path: str | os.PathLike, *, shard_size: int | None = None, repair: bool = False) -> Path:
    """Return ``path`` as a Path after checking, without a model, that a store can be created or resumed there.

    Allowed: a new or empty folder, or an existing store (its store.json must be readable unless
    ``repair``). Refused with one line: a file, an unrelated non-empty folder, ``.``/a parent of the
    working directory/``$HOME``, an unwritable parent, ``shard_size`` < 1.
    """
    checks.count(shard_size, "shard_size", optional=True)
    path = Path(path)
    own = (STORE_FILE, LOCK_FILE, "shards")
    if path.is_dir() and any(
        p.name not in own and not p.name.startswith(f"{STORE_FILE}.corrupt-") for p in path.iterdir()
    ):
        raise LatentStoreError(f"{path} is not empty and is not a latent store; collect into a new or empty folder")
    path = check_output_dir(path, own)  # '.', parents of the working directory, $HOME, a file, an unwritable parent
    if (path / STORE_FILE).exists() and not repair:
        read_config(path)
    elif _has_finished_shards(path) and not (path / STORE_FILE).exists() and not repair:
        raise LatentStoreError(f"the latent store {path} has shards but no {STORE_FILE}; {REPAIR_HINT}")
    return path


def remove_store(path: str | os.PathLike) -> None:
    """Return None after deleting the latent store at ``path`` (nothing when missing); refuse anything else.

    Only a folder laid out as llmlatent writes a store is deleted: at its top only store.json, its lock, set-aside
    corrupt copies and ``shards/``, and in ``shards/`` only shard folders (``00000`` …), their temporaries
    (``.tmp-00000-…``) and claim locks (``.claim-00000.lock``).
    A user's folder that merely holds a file named store.json, or a ``shards/`` folder of other
    files, is refused with one line and left as it is.
    """
    import shutil

    path = check_store_dir(path, repair=True)  # the top level: ours only ('.', $HOME, a file refused too)
    if not path.exists():
        return
    shards = path / "shards"
    if (shards.exists() and not shards.is_dir()) or (
        shards.is_dir()
        and any(
            not (p.is_dir() and (re.fullmatch(r"\d{5}", p.name) or p.name.startswith(".tmp-")))
            and not (p.is_file() and re.fullmatch(r"\.claim-\d{5}\.lock", p.name))
            for p in shards.iterdir()
        )
    ):
        raise LatentStoreError(f"{shards} holds files a latent store does not write; remove {path} yourself")
    shutil.rmtree(path)


def _has_finished_shards(path: Path) -> bool:
    """Return True when ``path/shards`` holds a finished shard folder (a store whose store.json is gone)."""
    shards = path / "shards"
    return shards.is_dir() and any(p.name.isdigit() for p in shards.iterdir())


def _recorded_shard_size(path: Path) -> int | None:
    """Return the shard size recorded in shard 0's shard.json (a store being repaired), or None."""
    try:
        info = json.loads((shard_dir(path, 0) / SHARD_FILE).read_text(encoding="utf-8"))
        return int(info["stop"]) - int(info["start"]) if int(info["start"]) == 0 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _set_aside(path: Path) -> None:
    """Rename an unreadable store.json to store.json.corrupt-N (kept for inspection, never read again)."""
    n = 0
    while (path / f"{STORE_FILE}.corrupt-{n}").exists():
        n += 1
    os.replace(path / STORE_FILE, path / f"{STORE_FILE}.corrupt-{n}")


def check_shard_values(rows: int, layers: int, hidden: int) -> None:
    """Return None if a shard of ``rows`` prompts fits Array2D's storage (Arrow lists, 32-bit offsets: fewer than
    2^31 latent values); else raise LatentStoreError naming the largest shard size that fits."""
    if (size := rows * layers * hidden) >= 2**31:
        raise LatentStoreError(
            f"shard size {rows} is too large for {layers} layers × {hidden}: {size:,} values, beyond the 2^31 an "
            f"Arrow list can index; at most {(2**31 - 1) // (layers * hidden)} prompts fit one shard; "
            "pass a smaller --shard-size"
        )


def open_or_create(path: Path, config: dict, shard_size: int | None, *, repair: bool = False) -> dict:
    """Return the store's config, creating the store (under a file lock; ranks race here) or checking it fits.

    ``repair`` rebuilds an unreadable store.json (set aside as ``store.json.corrupt-N``) from ``config``,
    keeping the ``shards/`` folder: the caller then keeps every shard that still verifies. The shard size
    comes from ``shard_size`` or, when not given, from shard 0's shard.json.
    """
    from filelock import FileLock

    checks.count(shard_size, "shard_size", optional=True)
    if shard_size is not None:  # refused before anything is created
        check_shard_values(int(shard_size), config["n_layers"], config["hidden_size"])
    path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path / LOCK_FILE)):
        if repair and (path / STORE_FILE).exists():
            try:
                read_config(path)
            except LatentStoreError as exc:
                log.warning("repairing %s: %s", path, exc)
                _set_aside(path)
        if (path / STORE_FILE).exists():
            existing = read_config(path)
            if not Fingerprint.of(existing["fingerprint"]).same_model(config["fingerprint"]):  # the name may differ
                raise FingerprintMismatch(mismatch_message(path, existing, config))
            wanted = dict(config, shard_size=existing["shard_size"] if shard_size is None else int(shard_size))
            for key, label in (("dtype", "storage dtype"), ("prompts_sha256", "prompts"), ("shard_size", "shard size")):
                if existing[key] != wanted[key]:
                    raise LatentStoreError(
                        f"{path} already holds a latent store with different {label} "
                        f"({existing[key]} vs {wanted[key]}); "
                        "collect into another folder, or delete it to start over"
                    )
            return existing
        # a crash between creating shards/ and writing store.json leaves an empty shards/: harmless
        kept = (LOCK_FILE, "shards") if repair or not _has_finished_shards(path) else (LOCK_FILE,)
        if any(p.name not in kept and not p.name.startswith(f"{STORE_FILE}.corrupt-") for p in path.iterdir()):
            raise LatentStoreError(f"{path} is not empty and is not a latent store; collect into a new or empty folder")
        size = shard_size if shard_size is not None else (repair and _recorded_shard_size(path)) or DEFAULT_SHARD_SIZE
        config = dict(config, shard_size=int(size), n_shards=math.ceil(config["n_prompts"] / int(size)))
        (path / "shards").mkdir(exist_ok=True)
        write_json(path / STORE_FILE, config)
        return config


# ---------------------------------------------------------------- shards


def shard_dir(path: Path, k: int) -> Path:
    """Return the folder of finished shard ``k``."""
    return path / "shards" / f"{k:05d}"
