"""Running one sweep into an output folder (rows.csv, summary.csv, figures, run.json), atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from llmlatent import __version__
from llmlatent.atomic import check_output_dir
from llmlatent.experiments import runs
from llmlatent.tasks import SET_COLUMNS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmlatent.model import Model
    from llmlatent.tasks import PromptSet

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    """Return the versions that matter for reproducing a run."""
    import torch
    import transformers

    return {
        "llmlatent": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


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


def token_sets(prompts: PromptSet, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
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


def prompts_digest(prompts: PromptSet) -> str:
    """Return a sha256 over every prompt text and its token-id sets, in order (the sweep's whole input).

    The word lists (bundled or ``--words``), a ``--prompts`` file, ``n``, the seed of the few-shot
    examples, ``strict``, ``cognate_filter`` and ``n_shots`` all reach the sweep only through these
    prompts and sets, so this digest changes whenever any of them changes what is computed.
    """
    columns = ["prompt", *(c for c in SET_COLUMNS.values() if c in prompts.df)]
    blob = json.dumps(
        prompts.df[columns].to_numpy().tolist(),
        ensure_ascii=False,
        default=lambda v: v.tolist() if hasattr(v, "tolist") else list(v),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def sweep_key(model: Model, prompts: PromptSet, *, seed: int = 0, ci: str = "normal") -> dict:
    """Return the cache key of a sweep folder: model identity and dtype, the prompt set's settings and digest, seed, ci.

    ``batch_size`` is not part of it: batches only group prompts of similar length; with left padding and
    the attention mask each prompt's forward is the same computation, so the rows agree to float32
    rounding (``test_sweep_frame_and_batch_invariance``), far below any interval width.
    """
    settings = {
        **prompts.meta,
        "prompts_sha256": prompts_digest(prompts),
        "sweep_seed": seed,
        "ci": ci,
        "dtype": str(getattr(model.hf, "dtype", "")),
    }
    return runs.cache_key("sweep", model.fingerprint(), settings)


def sweep_to_dir(
    model: Model,
    prompts: PromptSet,
    out: str | Path,
    *,
    batch_size: int = 16,
    seed: int = 0,
    ci: str = "normal",
    started: float | None = None,
    progress: bool = True,
) -> dict:
    """Return run.json's content after writing rows.csv, summary.csv, prob/energy figures (PNG+PDF) to ``out``.

    run.json carries the :func:`sweep_key`; ``runs.cached(out, sweep_key(...))`` tells whether the folder is current.
    ``out`` is checked first (:func:`llmlatent.atomic.check_output_dir`): it must be new, empty or a
    previous sweep (its run.json), so a bad folder fails before the computation, and unrelated files
    are never replaced.
    """
    import matplotlib.pyplot as plt

    from llmlatent import checks, lens, metrics
    from llmlatent.experiments import plots

    check_output_dir(out, "run.json")
    checks.count(batch_size, "batch_size")
    started = time.perf_counter() if started is None else started
    sweep_started = time.perf_counter()
    rows = lens.sweep(model, prompts, batch_size=batch_size, seed=seed, progress=progress)
    sweep_seconds = time.perf_counter() - sweep_started
    meta = dict(prompts.meta)
    rows.insert(1, "concept", rows["prompt_id"].map(dict(zip(prompts.df["prompt_id"], prompts.df["concept"]))))
    summary = metrics.summarize(rows, ci=ci, seed=seed)
    with runs.write_run(out, sweep_key(model, prompts, seed=seed, ci=ci)) as (tmp, run):
        rows.to_csv(tmp / "rows.csv", index=False, float_format="%.8g")
        summary.to_csv(tmp / "summary.csv", index=False, float_format="%.8g")
        token_sets(prompts, model.tokenizer).to_csv(tmp / "prompts.csv", index=False)
        title = title_of(meta, model.name)
        for name, fig in (
            ("probabilities", plots.probability_figure(summary, meta, title)),
            ("energy", plots.energy_figure(summary, title)),
        ):
            plots.save(fig, tmp / name)
            plt.close(fig)
        run.update(
            {
                **meta,
                "model": model.fingerprint().to_dict(),
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
        )
    log.info("wrote %s (%d prompts, %.1f s)", out, len(prompts), run["seconds"])
    return run


def pivot_examples(rows: pd.DataFrame, prompts: pd.DataFrame, layer: int) -> pd.DataFrame:
    """Return one row per prompt: its words, the lens's top token and p(English) at ``layer``, the last layer's top token and p(target)."""
    at = rows[rows["layer"] == layer].merge(prompts[["prompt_id", "tgt_word", "en_word"]], on="prompt_id")
    last = rows[rows["layer"] == rows["layer"].max()][["prompt_id", "top_token", "p_target"]]
    view = at.merge(last, on="prompt_id", suffixes=(f"_layer{layer}", "_last"))
    return view[
        ["concept", "tgt_word", "en_word", f"top_token_layer{layer}", "p_english", "top_token_last", "p_target_last"]
    ]


# token-set variants of one experiment: if the English peak survives them, it is not an artefact of loose prefix
# matching (strict) or of cognates (the source word's tokens overlapping the English ones)
VARIANTS = {
    "default": {},
    "strict": {"strict": True},
    "cognate filter": {"cognate_filter": True},
    "strict + cognate": {"strict": True, "cognate_filter": True},
}


def variants_for(task: str, src: str, tgt: str) -> dict[str, dict]:
    """Return the variants that can differ for a task: the cognate filter needs a source language other than English and the target."""
    with_source = task == "translation" and src not in ("en", tgt)
    return {k: v for k, v in VARIANTS.items() if with_source or "cognate_filter" not in v}


def compare_variants(
    model: Model,
    task: str,
    src: str,
    tgt: str,
    *,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    variants: dict[str, dict] | None = None,
    words_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Return (a table with one row per variant: n_prompts, peak English layer and value, final target; {variant: summary}).

    Each variant is :func:`llmlatent.tasks.build` with extra options (default :func:`variants_for`), swept
    with the same ``seed`` and summarised; draw the curves with :func:`llmlatent.plots.variants_figure`.
    """
    from llmlatent import lens, metrics, tasks

    records, summaries = [], {}
    for label, options in (variants_for(task, src, tgt) if variants is None else variants).items():
        prompts = tasks.build(task, src, tgt, model.tokenizer, n=n, seed=seed, words_dir=words_dir, **options)
        summary = metrics.summarize(lens.sweep(model, prompts, batch_size=batch_size, seed=seed, progress=False))
        head = headline(summary)
        summaries[label] = summary
        records.append(
            {
                "variant": label,
                "n_prompts": len(prompts),
                "peak_english_layer": head["peak_english"]["layer"],
                "peak_english": head["peak_english"]["value"],
                "final_target": head["final_target"]["value"],
            }
        )
    return pd.DataFrame(records), summaries
