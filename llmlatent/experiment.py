"""Running one sweep into an output folder (rows.csv, summary.csv, figures, run.json), atomically."""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import pandas as pd

from . import __version__
from .atomic import atomic_dir

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    """Return the versions that matter for reproducing a run."""
    import torch
    import transformers

    return {"llmlatent": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def headline(summary: pd.DataFrame) -> dict:
    """Return the English-pivot numbers of a summary: peak p_english (layer, value), p_source there, final p_target."""
    peak = summary.loc[summary["p_english_mean"].idxmax()]
    last = summary.iloc[-1]
    return {
        "peak_english": {"layer": int(peak["layer"]), "value": float(peak["p_english_mean"])},
        "p_source_at_peak": None if pd.isna(peak["p_source_mean"]) else float(peak["p_source_mean"]),
        "final_target": {"layer": int(last["layer"]), "value": float(last["p_target_mean"])},
        "final_english": float(last["p_english_mean"]),
    }


def token_sets(prompts: object, tokenizer: object) -> pd.DataFrame:
    """Return the prompt table with each token set as JSON lists of ids and of vocabulary strings.

    Columns ``target_ids``/``target_tokens``, ``english_ids``/``english_tokens`` and
    ``source_ids``/``source_tokens`` (empty where p_source is undefined) record exactly which tokens
    each probability summed, e.g. ``["<0xE4>", "云"]`` for 云 on Llama-2.
    """
    frame = prompts.df.copy()
    for column in ("target_ids", "english_ids", "source_ids"):
        ids = [list(map(int, s)) if s is not None and len(s) else None for s in frame[column]]
        frame[column] = [json.dumps(s) if s is not None else "" for s in ids]
        frame[column.replace("_ids", "_tokens")] = [
            json.dumps(tokenizer.convert_ids_to_tokens(s), ensure_ascii=False) if s is not None else "" for s in ids
        ]
    return frame


def title_of(meta: dict, model_name: str) -> str:
    """Return a figure title such as ``translation fr→zh · google/gemma-3-270m``."""
    task = meta.get("task", "")
    pair = meta.get("tgt", "") if task == "cloze" else f"{meta.get('src', '')}→{meta.get('tgt', '')}"
    return f"{task} {pair} · {model_name}"


def sweep_to_dir(
    model: object,
    prompts: object,
    out: str | Path,
    *,
    batch_size: int = 16,
    seed: int = 0,
    ci: str = "normal",
    started: float | None = None,
    progress: bool = True,
) -> dict:
    """Return run.json's content after writing rows.csv, summary.csv, prob/energy figures (PNG+PDF) to ``out``."""
    import matplotlib.pyplot as plt

    from . import lens, metrics, plots

    started = time.perf_counter() if started is None else started
    sweep_started = time.perf_counter()
    rows = lens.sweep(model, prompts, batch_size=batch_size, seed=seed, progress=progress)
    sweep_seconds = time.perf_counter() - sweep_started
    meta = dict(prompts.meta)
    rows.insert(1, "concept", rows["prompt_id"].map(dict(zip(prompts.df["prompt_id"], prompts.df["concept"]))))
    summary = metrics.summarize(rows, ci=ci, seed=seed)
    with atomic_dir(out) as tmp:
        rows.to_csv(tmp / "rows.csv", index=False, float_format="%.8g")
        summary.to_csv(tmp / "summary.csv", index=False, float_format="%.8g")
        token_sets(prompts, model.tokenizer).to_csv(tmp / "prompts.csv", index=False)
        title = title_of(meta, model.name)
        for name, fig in (("probabilities", plots.probability_figure(summary, meta, title)),
                          ("energy", plots.energy_figure(summary, title))):
            plots.save(fig, tmp / name)
            plt.close(fig)
        run = {
            **meta,
            "model": model.fingerprint(),
            "n_prompts": len(prompts),
            "dropped": prompts.dropped,
            "token_sets": "prompts.csv: target_tokens, english_tokens, source_tokens (and their _ids)",
            "notes": prompts.notes,
            "ci": ci,
            "batch_size": batch_size,
            **headline(summary),
            "sweep_seconds": round(sweep_seconds, 3),
            "seconds": round(time.perf_counter() - started, 3),
            "versions": versions(),
        }
        (tmp / "run.json").write_text(json.dumps(run, indent=1, ensure_ascii=False))
    log.info("wrote %s (%d prompts, %.1f s)", out, len(prompts), run["seconds"])
    return run
