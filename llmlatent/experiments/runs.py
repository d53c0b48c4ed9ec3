"""One run helper for every experiment: settings → cache key → reuse or compute → atomic folder → record.

Every experiment module declares one :class:`~llmlatent.experiments.base.Experiment` (its kind, format version,
record file, frozen settings class, ``compute(model, settings)`` returning a typed result, and
``write(result, folder)`` writing the tidy CSVs and figures and returning the record's own fields), and
:data:`llmlatent.experiments.EXPERIMENTS` lists them. :func:`run` finds the experiment of a settings class in that
list and does the rest, the same way for every command: a folder whose stored key equals the new key is reused,
``force=True`` recomputes, the new folder replaces the old one atomically, and the record gets the settings, model
identity, versions, timings, the list of files written (``files``) and the cache key.

A previous result is recognised only by a record llmlatent wrote (``cache_key`` of this kind) in a folder
that holds nothing but the files its record lists; anything else is refused before any computation.
"""

from __future__ import annotations

import errno
import json
import logging
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from llmlatent import experiments
from llmlatent.atomic import atomic_dir, check_output_dir
from llmlatent.errors import OutputFolderError
from llmlatent.experiments.base import Clock, Experiment

if TYPE_CHECKING:
    from llmlatent.experiments.settings import Settings
    from llmlatent.model import Model

log = logging.getLogger(__name__)


def experiment_of(settings: Settings) -> Experiment:
    """Return the experiment of :data:`llmlatent.experiments.EXPERIMENTS` whose settings class is ``settings``'."""
    for experiment in experiments.EXPERIMENTS:
        if isinstance(experiment, Experiment) and experiment.settings is type(settings):
            return experiment
    raise TypeError(f"no experiment of llmlatent.experiments.EXPERIMENTS takes {type(settings).__name__}")


def versions() -> dict[str, str]:
    """Return the versions that matter for reproducing a run."""
    import torch
    import transformers

    from llmlatent import __version__

    return {
        "llmlatent": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def cache_key(experiment: Experiment, fingerprint: Mapping, settings: Mapping) -> dict:
    """Return the JSON-able cache key of a result: kind, format version, model identity and every setting.

    The model enters by identity (unembedding hash, layers, hidden size), not by name, so a model loaded
    by hub id and by local path share results. ``settings`` must hold every value that changes the result.
    """
    from llmlatent import __version__
    from llmlatent.adapter import IDENTITY_KEYS, Fingerprint

    fp = Fingerprint.of(fingerprint).to_dict()
    model = {k: fp[k] for k in IDENTITY_KEYS}
    key = {
        "kind": experiment.kind,
        "format": experiment.format_version,
        "llmlatent": __version__,
        "model": model,
        "settings": dict(settings),
    }
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def key_of(settings: Settings, model: Model, experiment: Experiment | None = None) -> dict:
    """Return the cache key of ``settings`` on ``model``: its key fields, its model-dependent inputs and dtype.

    ``experiment`` defaults to the one of :data:`llmlatent.experiments.EXPERIMENTS` that takes ``settings``.
    """
    fields = settings.key_fields()
    extra = getattr(settings, "key_inputs", None)
    if extra is not None:
        fields.update(extra(model))
    hf = getattr(model, "hf", None)  # a LoadedHead (a sweep from a latent store) has only its head
    fields["dtype"] = str(getattr(hf, "dtype", "")) if hf is not None else str(model.unembedding.head.weight.dtype)
    return cache_key(experiment or experiment_of(settings), model.fingerprint(), fields)


def read_record(folder: str | Path, record: str = "run.json") -> dict | None:
    """Return the JSON record of ``folder`` (None when missing or unreadable)."""
    path = Path(folder) / record
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def files_of(folder: Path) -> list[str]:
    """Return the relative paths of every file under ``folder``, sorted (a run's manifest)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def is_ours(folder: str | Path, kind: str, record: str = "run.json") -> bool:
    """Return whether ``folder`` holds a result of ``kind`` that llmlatent wrote and nothing else.

    The record must carry a cache key of this kind and a manifest (``files``); the folder may hold no file
    that the manifest does not list. A lone file named like the record proves nothing.
    """
    saved = read_record(folder, record)
    if not isinstance(saved, dict) or not isinstance(saved.get("cache_key"), dict):
        return False
    if saved["cache_key"].get("kind") != kind or not isinstance(saved.get("files"), list):
        return False
    return set(files_of(Path(folder))) <= set(saved["files"]) | {record}


def check_out(out: str | Path, experiment: Experiment) -> Path:
    """Return ``out`` after checking that the experiment may write there (new, empty, or a result of its own)."""
    return check_output_dir(
        out,
        lambda folder: is_ours(folder, experiment.kind, experiment.record),
        what=f"a previous {experiment.kind} result ({experiment.record} with its file list)",
    )


def cached(folder: str | Path, key: Mapping, record: str = "run.json") -> dict | None:
    """Return the stored record of ``folder`` when its cache key equals ``key``, else None (recompute)."""
    saved = read_record(folder, record)
    if saved is None:
        return None
    if saved.get("cache_key") != json.loads(json.dumps(dict(key), sort_keys=True, default=str)):
        log.info("%s: settings or model changed, recomputing", folder)
        return None
    return saved


@contextmanager
def disk_full(out: Path, tmp: Path) -> Iterator[None]:
    """Yield; a full disk while writing ``tmp`` becomes one line naming ``out``, the bytes written and the fix."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        raise OutputFolderError(
            f"no space left on the device of {out} after writing {written / 1e6:.1f} MB of the result (nothing was "
            f"kept); free some space there (df -h {out.parent}) or pass --out on another disk"
        ) from exc


def run(
    settings: Settings, model: Model, out: str | Path, *, force: bool = False, experiment: Experiment | None = None
) -> dict:
    """Return the record of ``out`` after computing ``settings`` on ``model`` there, or reusing a matching result.

    ``out`` is checked first (:func:`check_out`), so a bad folder fails before any computation. ``experiment``
    defaults to the one of :data:`llmlatent.experiments.EXPERIMENTS` that takes ``settings``; pass another (e.g.
    ``dataclasses.replace(EXPERIMENT, compute=…)``) to run it with the same folder, key and record.
    """
    settings.preflight()  # the files the settings name (the command line has called it before the model load)
    experiment = experiment or experiment_of(settings)
    out = check_out(out, experiment)
    key = key_of(settings, model, experiment)
    if not force and (record := cached(out, key, experiment.record)) is not None:
        log.info("%s %s: cached (same model and settings)", experiment.kind, out)
        return record
    clock = Clock()
    log.info("%s: %s", experiment.kind, experiment.describe(settings))
    result = experiment.compute(model, settings)
    compute_seconds = clock.total()
    ours = lambda folder: is_ours(folder, experiment.kind, experiment.record)  # noqa: E731
    with atomic_dir(out, ours) as tmp, disk_full(out, tmp):
        record = dict(experiment.write(result, tmp))
        record.update(
            settings=settings.to_dict(),
            model=model.fingerprint().to_dict(),
            versions=versions(),
            compute_seconds=round(compute_seconds, 3),
            seconds=round(clock.total(), 3),
        )
        record["files"] = [*files_of(tmp), experiment.record]
        record["cache_key"] = key
        text = json.dumps(record, indent=1, ensure_ascii=False, default=str)
        (tmp / experiment.record).write_text(text, encoding="utf-8")
    log.info("wrote %s in %.1f s", out, record["seconds"])
    return json.loads(text)  # the same structure a cached call returns
