"""Reading single tensors from a model's safetensors checkpoint (local folder or hub cache), never pickle."""

from __future__ import annotations

import json
from pathlib import Path

from llmlatent.errors import ModelLoadError


def checkpoint_files(path: str, token: str | None) -> tuple[dict[str, str], object]:
    """Return (tensor name → safetensors file name, file name → local path) of a model folder or hub id."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    def local(filename: str) -> str | None:
        try:
            return cached_file(path, filename, token=token, _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {filename} of {path!r}: {exc}") from exc

    index = local("model.safetensors.index.json")
    if index:
        return json.loads(Path(index).read_text())["weight_map"], local
    single = local("model.safetensors")
    if not single:
        raise ModelLoadError(
            f"{path!r} has no safetensors weights (model.safetensors or model.safetensors.index.json); "
            "load_unembedding reads only safetensors (never pickle): convert the model with save_pretrained"
        )
    with safe_open(single, framework="pt") as fh:
        return dict.fromkeys(fh.keys(), "model.safetensors"), local


def find_key(key: str, keys: dict, fallbacks: tuple[str, ...] = ()) -> str | None:
    """Return the checkpoint's name of tensor ``key`` (or of a fallback), also under another prefix; None if absent."""
    for candidate in (key, *fallbacks):
        if candidate in keys:
            return candidate
    for candidate in (key, *fallbacks):  # checkpoints saved under another prefix (e.g. language_model.)
        tail = candidate.split(".", 1)[-1]
        matches = [k for k in keys if k.endswith("." + candidate) or k.endswith("." + tail) or k == tail]
        if len(matches) == 1:
            return matches[0]
    return None
