"""The fit step of the steering demo: latent stores of the fit prompts, reused when an existing store holds them."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pandas as pd

from llmlatent import tasks
from llmlatent.adapter import same_model
from llmlatent.steering.vector import SteeringVector

if TYPE_CHECKING:
    from llmlatent.latents import LatentStore
    from llmlatent.model import Model

log = logging.getLogger(__name__)


def open_stores(stores: Sequence[LatentStore | str | Path]) -> list[LatentStore]:
    """Return latent stores given as stores or as folders (loaded and verified)."""
    from llmlatent import latents

    return [cast("LatentStore", s) if hasattr(s, "prompts") else latents.load(s) for s in stores]  # duck-typed


def _digest(texts: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]


def store_with(stores: Sequence[LatentStore], model: Model, frame: pd.DataFrame) -> LatentStore | None:
    """Return the first store that holds, for this model, exactly ``frame``'s prompt for each of its concepts."""
    for store in stores:
        if not same_model(store.fingerprint, model.fingerprint()) or "concept" not in store.prompts:
            continue
        held = store.prompts.drop_duplicates("concept", keep=False).set_index("concept")["prompt"]
        if all(held.get(c) == p for c, p in zip(frame["concept"], frame["prompt"])):
            return store
    return None


def fit_stores(
    model: Model,
    frames: dict[str, pd.DataFrame],
    fit: list[str],
    store_dir: Path,
    *,
    reuse_stores: Sequence[LatentStore] = (),
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[dict[str, LatentStore], dict[str, dict]]:
    """Return (language → latent store holding the fit prompts, language → where they came from).

    A store in ``reuse_stores`` is used when it holds the very same prompt for every fit concept (no
    forward pass); otherwise the fit prompts are collected (float32) into ``store_dir``, in a folder
    named by their digest, so a later run with the same prompts resumes it instead of recomputing.
    """
    from llmlatent import latents

    out, info = {}, {}
    for lang, frame in frames.items():
        part = frame.loc[fit].reset_index(drop=True)
        found = store_with(reuse_stores, model, part)
        if found is not None:
            out[lang], info[lang] = found, {"reused": True, "store": Path(found.path).name, "dtype": found.dtype}
            log.info("fit latents %s: reused from %s", lang, found.path)
            continue
        folder = store_dir / f"{part['src'].iloc[0]}-{lang}-{_digest(part['prompt'].tolist())}"
        meta = {"task": "translation", "src": part["src"].iloc[0], "tgt": lang}
        resumed = (folder / "store.json").exists()  # kept by an earlier run: collect only verifies its shards
        # one process (no rank given): collect returns the store, None only on the other ranks of a group
        out[lang] = cast(
            "LatentStore",
            latents.collect(
                model,
                tasks.PromptSet(part, meta=meta),
                folder,
                batch_size=batch_size,
                dtype="float32",
                progress=progress,
            ),
        )
        info[lang] = {"reused": False, "resumed": resumed, "store": folder.name, "dtype": "float32"}
    return out, info


def rescaled(vector: SteeringVector, norm: float, meta: dict) -> SteeringVector:
    """Return ``vector``'s direction with Euclidean norm ``norm`` (a control of the same norm class)."""
    return SteeringVector(vector.layer, vector.vector / vector.vector.norm() * norm, {**vector.meta, **meta})
