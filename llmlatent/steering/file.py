"""The file format of a steering vector: one safetensors file, tensor ``vector``, layer and meta as JSON in its header.

The header also holds ``sha256``, a hash over the format, the layer, the meta JSON, the dtype, the shape
and the tensor's bytes (:func:`digest`), so a flipped byte in the data or in the header metadata is
refused on reading. :mod:`llmlatent.steering.vector` is its only user; errors are raised as the class it passes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from llmlatent.atomic import atomic_file

FORMAT = "llmlatent.steering_vector/1"
TRUST_HINT = "pass trust_unverified=True to use it anyway"


def digest(layer: str, meta: str, vector: torch.Tensor) -> str:
    """Return the sha256 hex of a vector file's content: format, layer, meta JSON, dtype, shape and data bytes."""
    data = vector.detach().to("cpu").contiguous()
    head = json.dumps([FORMAT, layer, meta, str(data.dtype), list(data.shape)], ensure_ascii=False)
    sha = hashlib.sha256(head.encode("utf-8"))
    sha.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return sha.hexdigest()


def write(path: Path, layer: int, vector: torch.Tensor, meta: dict) -> None:
    """Write ``vector`` (float32, 1-D) with ``layer`` and ``meta`` to ``path`` atomically, with its sha256."""
    from safetensors.torch import save_file

    vector = vector.contiguous()
    header = {"format": FORMAT, "layer": str(layer), "meta": json.dumps(meta, ensure_ascii=False)}
    header["sha256"] = digest(header["layer"], header["meta"], vector)
    with atomic_file(path) as tmp:
        save_file({"vector": vector}, str(tmp), metadata=header)


def _read_raw(path: Path, error: type[Exception]) -> tuple[dict, torch.Tensor]:
    """Return (header metadata, tensor ``vector``) of a safetensors file; ``error`` when unreadable or foreign."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            if header.get("format") != FORMAT or "vector" not in fh.keys():
                raise error(f"{path} is not a llmlatent steering vector (format {header.get('format')!r})")
            return header, fh.get_tensor("vector")
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, error):
            raise
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise error(
            f"{path} is not a readable steering vector file ({reason}); it is truncated or damaged: save it again"
        ) from None


def read(
    path: str | os.PathLike, *, error: type[Exception], trust_unverified: bool = False
) -> tuple[int, torch.Tensor, dict]:
    """Return (layer, vector, meta) of a file written by :func:`write`, verified; raise ``error`` with one line else.

    The sha256 must be present and match, and the meta must hold a model fingerprint, unless
    ``trust_unverified`` (a file of an older version or another tool); a present sha256 is always checked.
    """
    path = Path(path)
    header, vector = _read_raw(path, error)
    layer, meta_text, stored = header.get("layer", ""), header.get("meta", "{}"), header.get("sha256")
    if stored is None and not trust_unverified:
        raise error(
            f"{path} carries no sha256 of its content (an older or foreign file), so it cannot be verified; "
            f"{TRUST_HINT}"
        )
    if stored is not None and stored != digest(layer, meta_text, vector):
        raise error(
            f"{path} is damaged: its layer, metadata or data no longer match the sha256 it was saved with; "
            "save it again"
        )
    if vector.dtype != torch.float32 or vector.ndim != 1 or not layer.isdigit():
        raise error(
            f"{path} holds a {vector.dtype} tensor of shape {tuple(vector.shape)} for layer {layer!r}, "
            "not a 1-D float32 vector for a layer number"
        )
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: its metadata is not valid JSON ({exc}); save the vector again") from None
    if not isinstance(meta, dict):
        raise error(f"{path}: its metadata is a JSON {type(meta).__name__}, not an object; save the vector again")
    if not meta.get("fingerprint") and not trust_unverified:
        raise error(f"{path} carries no model fingerprint, so it cannot be checked against a model; {TRUST_HINT}")
    return int(layer), vector, meta
