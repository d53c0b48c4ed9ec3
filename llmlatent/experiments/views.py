"""Notebook views of sweeps: the pivot table of a layer, and token-set variants of one experiment side by side."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from llmlatent import metrics, tasks
from llmlatent.experiments.sweep import headline

if TYPE_CHECKING:
    from llmlatent.model import Model


def pivot_examples(rows: pd.DataFrame, prompts: pd.DataFrame, layer: int) -> pd.DataFrame:
    """Return one row per prompt: its words, the lens's top token and p(English) at ``layer``, the last layer's top
    token and p(target)."""
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
    """Return the variants that can differ for a task: the cognate filter needs a source language other than English
    and the target."""
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
    """Return (a table with one row per variant: n_prompts, peak English layer and value, final target; {variant:
    summary}).

    Each variant is :func:`llmlatent.tasks.build` with extra options (default :func:`variants_for`), swept
    with the same ``seed`` and summarised; draw the curves with
    :func:`llmlatent.experiments.figures.plots.variants_figure`.
    """
    from llmlatent.lens import last_token as lens

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
