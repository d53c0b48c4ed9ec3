"""One cached-run helper for every result folder (sweeps, steering, patching, reproduce's steps).

A run folder holds a JSON record (``run.json`` or ``best.json``) whose ``"cache_key"`` is built by
:func:`cache_key` from the model fingerprint, every setting that changes the result and a format
version. A folder is reused only when its stored key equals the key of the run being asked for;
otherwise it is recomputed and replaced atomically (see :func:`llmlatent.atomic.atomic_dir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from llmlatent.atomic import atomic_dir, file_sha256

log = logging.getLogger(__name__)

# bump when the content or layout of a kind of result changes, so old folders are recomputed
FORMAT_VERSION = {"sweep": 2, "steering": 2, "patching": 1, "latents": 1}


def words_digest(directory: str | Path | None) -> str | None:
    """Return a sha256 over the word CSVs under ``directory`` (None = the bundled data, keyed by the package version)."""
    if directory is None:
        return None
    digest = hashlib.sha256()
    for path in sorted(Path(directory).rglob("*.csv")):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def cache_key(kind: str, fingerprint: Mapping, settings: Mapping) -> dict:
    """Return the JSON-able cache key of a result: kind, format version, model identity and every setting.

    The model enters by identity (unembedding hash, layers, hidden size), not by name, so a model loaded
    by hub id and by local path share results. ``settings`` must hold every value that changes the result
    (seed, n, layers, alphas, word-file digest, prompt-file digest …); it must be JSON-serialisable.
    """
    from llmlatent import __version__
    from llmlatent.adapter import IDENTITY_KEYS, Fingerprint

    fp = Fingerprint.of(fingerprint).to_dict()
    model = {k: fp[k] for k in IDENTITY_KEYS}
    key = {
        "kind": kind,
        "format": FORMAT_VERSION.get(kind, 1),
        "llmlatent": __version__,
        "model": model,
        "settings": dict(settings),
    }
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def record_path(folder: str | Path, record: str = "run.json") -> Path:
    """Return the path of a run folder's JSON record."""
    return Path(folder) / record


def cached(folder: str | Path, key: Mapping, record: str = "run.json") -> dict | None:
    """Return the stored record of ``folder`` when its cache key equals ``key``, else None (recompute)."""
    path = record_path(folder, record)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.info("%s: unreadable record, recomputing", path)
        return None
    if saved.get("cache_key") != json.loads(json.dumps(dict(key), sort_keys=True, default=str)):
        log.info("%s: settings or model changed, recomputing", folder)
        return None
    return saved


@contextmanager
def write_run(folder: str | Path, key: Mapping, record: str = "run.json") -> Iterator[tuple[Path, dict]]:
    """Yield (temporary folder, record dict) and, if the block succeeds, write the record with its key and swap it in.

    The caller writes files into the temporary folder and fills the record; ``cache_key`` is added here.
    The previous folder is replaced only if it held a record of this kind (never unrelated files).
    """
    with atomic_dir(folder, marker=record) as tmp:
        content: dict = {}
        yield tmp, content
        content["cache_key"] = dict(key)
        (tmp / record).write_text(json.dumps(content, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
