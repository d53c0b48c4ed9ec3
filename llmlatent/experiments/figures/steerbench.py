"""Figures of the steering benchmark: source × target heatmaps of each method's test score and of the best layer."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.image import AxesImage

from llmlatent.experiments.figures.plots import styled
from llmlatent.steering.language_means import METHODS


def score_matrix(table: pd.DataFrame, method: str, setting: str = "steered") -> pd.DataFrame:
    """Return the source × target matrix of a method's test score in the benchmark's tidy table (NaN on the diagonal
    and where undefined)."""
    part = table[
        (table["split"] == "test")
        & (table["metric"] == "score")
        & (table["method"] == method)
        & (table["setting"] == setting)
    ]
    return part.pivot_table(index="source", columns="target", values="value", aggfunc="first")


def _panel(ax: plt.Axes, values: pd.DataFrame, title: str, fmt: str, vmin: float, vmax: float, cmap: str) -> AxesImage:
    """Return the image of one annotated source × target panel (empty cells: the diagonal and undefined pairs)."""
    data = values.to_numpy(dtype=float)
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(values.shape[1]), list(values.columns))
    ax.set_yticks(range(values.shape[0]), list(values.index))
    ax.set_xlabel("target")
    ax.set_title(title, fontsize=9)
    for r in range(data.shape[0]):
        for c in range(data.shape[1]):
            if np.isfinite(data[r, c]):
                light = data[r, c] < (vmin + vmax) / 2
                ax.text(
                    c, r, format(data[r, c], fmt), ha="center", va="center", fontsize=7, color="w" if light else "k"
                )
    return image


@styled
def benchmark_heatmaps(
    table: pd.DataFrame, best: pd.DataFrame, langs: Sequence[str], model_name: str = ""
) -> plt.Figure:
    """Return one figure: per method the source × target test score (the chosen layer and α), then the best layer.

    The last panel is the layer (after block i, 0-based) chosen on the select split for each pair's best
    method (highest test score; for a tie the earliest layer of the tied methods): where the language
    direction acts best.
    """
    langs = list(langs)
    methods = [m for m in METHODS if m in set(table["method"])]
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(2.9 * (len(methods) + 1), 3.2), squeeze=False)
    image = None
    for ax, method in zip(axes[0], methods):
        values = score_matrix(table, method).reindex(index=langs, columns=langs)
        image = _panel(ax, values, f"{method}: test score", ".2f", 0.0, 1.0, "viridis")
    axes[0][0].set_ylabel("source")
    fig.colorbar(image, ax=axes[0][: len(methods)].tolist(), shrink=0.8, label="score (harmonic mean)")  # type: ignore[arg-type]
    layers = best.pivot_table(index="source", columns="target", values="layer", aggfunc="first")
    layers = layers.reindex(index=langs, columns=langs)
    lo, hi = float(np.nanmin(layers.to_numpy(dtype=float))), float(np.nanmax(layers.to_numpy(dtype=float)))
    last = _panel(axes[0][-1], layers, "best method's chosen layer", ".0f", lo, max(hi, lo + 1), "magma")
    fig.colorbar(last, ax=axes[0][-1], shrink=0.8, label="layer (after block, 0-based)")
    fig.suptitle(f"language steering, every pair (held-out test split) · {model_name}", fontsize=10)
    return fig
