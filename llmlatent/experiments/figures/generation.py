"""Figures of the lens along generation (:mod:`llmlatent.lens.generation`) and of the detour experiment.

Same rules as :mod:`llmlatent.experiments.figures.plots`: layers are block outputs, 0-based; no global matplotlib
state; ``plots.save`` writes PNG + PDF without dates.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from llmlatent.errors import UsageError
from llmlatent.experiments.figures.plots import COLORS, LAYER_LABEL, heatmap, styled
from llmlatent.languages import registry as languages


def plain(text: str) -> str:
    """Return ``text`` with ``$`` escaped, so matplotlib draws it as is (never as mathtext)."""
    return text.replace("$", r"\$")


def shown(token: str, width: int = 10) -> str:
    """Return a token as a heatmap cell shows it: escapes visible, spaces as ␣, ≤ ``width`` characters, ``$`` safe."""
    return plain(repr(token)[1:-1].replace(" ", "\u2423")[:width])


@styled
def generation_heatmap(
    rows: pd.DataFrame, prompt_id: int = 0, colour: str = "probability", title: str | None = None
) -> plt.Figure:
    """Return the layer × generated-token heatmap of one prompt: cell = top-1 token, colour = ``colour``.

    ``rows`` are :func:`llmlatent.lens.generation.generation` rows; ``colour`` is ``probability`` (of the top
    token) or a word-set column such as ``p_en``. Columns are labelled ``step: generated token``; the
    last layer is drawn on top (its cells are the generated tokens).
    """
    if colour not in rows.columns:
        sets = [c for c in rows.columns if c.startswith("p_")]
        raise UsageError(f"--colour {colour!r} is not a column of the rows; choose probability or one of {sets}")
    top = rows[(rows["rank"] == 1) & (rows["prompt_id"] == prompt_id)]
    values = top.pivot(index="layer", columns="step", values=colour).sort_index(ascending=False)
    tokens = top.pivot(index="layer", columns="step", values="token").sort_index(ascending=False).map(shown)
    generated = top.drop_duplicates("step").set_index("step")["generated_token"]
    labels = [f"{s}: {shown(generated[s], 12)}" for s in values.columns]
    values.columns = tokens.columns = labels
    label = "p(top token)" if colour == "probability" else colour
    return heatmap(
        values,
        text=tokens,
        title=plain(f"{title or 'lens along generation'} · colour: {label}"),
        xlabel="step: generated token",
        ylabel=LAYER_LABEL,
        vmin=0,
        vmax=1,
    )


@styled
def detour_figure(summary: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """Return one panel per target language: mean p(English), p(target), p(best other language) per layer.

    ``summary`` is the detour experiment's summary (rows per target × layer, first answer token).
    """
    targets = list(dict.fromkeys(summary["tgt"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3), sharey=True, squeeze=False)
    for ax, tgt in zip(axes[0], targets):
        part = summary[summary["tgt"] == tgt].sort_values("layer")
        x = part["layer"].to_numpy()
        ax.plot(x, part["p_english"], color=COLORS["english"], lw=2, label="English")
        ax.plot(x, part["p_target"], color=COLORS["target"], lw=2, label=f"target ({languages.label(tgt)})")
        ax.plot(x, part["p_source"], color=COLORS["source"], lw=1, ls="--", label="source")
        ax.plot(x, part["p_other_best"], color="0.4", lw=1, ls=":", label="best other language")
        src = part["src"].iloc[0]
        ax.set_title(f"{src}→{tgt} (n={int(part['n_prompts'].iloc[0])})", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(np.min(x), np.max(x))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("probability (first answer token)")
    axes[0][0].legend(loc="upper left", fontsize=7, frameon=False)
    fig.supxlabel(LAYER_LABEL)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
