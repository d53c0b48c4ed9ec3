"""Figures of the geometry experiment (MDS of latent paths, latent norm beside token energy) and the paper's own
Llama-2 lines as a dashed reference overlay; the styles and atomic saving of :mod:`llmlatent.experiments.plots`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection

from llmlatent.data import DISPLAY
from llmlatent.experiments.plots import COLORS, LAYER_LABEL, styled


def _word(token: str | None) -> str:
    """Return a token as a label: without the word-start marker."""
    return "" if token is None else str(token).lstrip("▁Ġ")


@styled
def mds_figure(points: pd.DataFrame, meta: dict | None = None, title: str | None = None) -> plt.Figure:
    """Return the MDS figure: tokens as grey crosses, each latent path coloured over layers, the paths' words."""
    meta = meta or {}
    fig, ax = plt.subplots(figsize=(7, 5.5))
    tokens = points[points["kind"] == "token"]
    lat = points[points["kind"] == "latent"]
    ax.scatter(tokens["x"], tokens["y"], marker="x", s=8, color="0.6", alpha=0.25, lw=0.6, label="token (unembedding)")
    ax.scatter(lat["x"], lat["y"], s=5, color="0.3", alpha=0.4, label="latent")
    n_layers = int(lat["layer"].max()) + 1 if len(lat) else 1
    cmap = plt.get_cmap("rainbow")
    for _, path in lat.groupby("prompt_id", sort=False):
        xy = path.sort_values("layer")[["x", "y"]].to_numpy(dtype=float)
        segments = np.stack([xy[:-1], xy[1:]], axis=1)
        colors = cmap(np.arange(len(segments)) / max(1, n_layers - 2))
        ax.add_collection(LineCollection(segments, colors=colors, alpha=0.35, lw=1.2))
    for role, color in (("target", COLORS["target"]), ("english", COLORS["english"])):
        for _, row in tokens[tokens["role"] == role].iterrows():
            ax.annotate(_word(row["token"]), (row["x"], row["y"]), color=color, fontsize=7)
    scale = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, n_layers - 1))
    fig.colorbar(scale, ax=ax, label=LAYER_LABEL, fraction=0.04)
    tgt = meta.get("tgt")
    handles = ax.get_legend_handles_labels()[0]
    handles += [plt.Line2D([], [], color=COLORS[r], lw=0, marker="$a$") for r in ("target", "english")]
    ax.legend(handles, ["token (unembedding)", "latent", f"target word ({DISPLAY.get(tgt, tgt)})", "English word"],
              fontsize=7, loc="best")  # fmt: skip
    outside = _zoom(ax, points)
    if outside:
        ax.text(
            0.01, 0.01, f"{outside} points outside the axes (1–99% range shown)", transform=ax.transAxes, fontsize=7
        )
    ax.set_xlabel("MDS dimension 1")
    ax.set_ylabel("MDS dimension 2")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _zoom(ax: plt.Axes, points: pd.DataFrame) -> int:
    """Return how many points fall outside the axes after limiting them to the points' 1–99% range (+10%).

    The first layers' latents, whose distributions resemble no sampled token, can sit far from everything
    else and would squeeze the token cloud and the paths into a corner."""
    xy = points[["x", "y"]].to_numpy(dtype=float)
    lo, hi = np.percentile(xy, 1, axis=0), np.percentile(xy, 99, axis=0)
    pad = (hi - lo) * 0.1
    lo, hi = lo - pad, hi + pad
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    return int((((xy < lo) | (xy > hi)).any(axis=1)).sum())


@styled
def norm_figure(norms: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """Return latent norm (left axis) and token energy (right axis) per layer, means with 95% bands."""
    fig, ax = plt.subplots(figsize=(6, 3))
    x = norms["layer"].to_numpy()
    right = ax.twinx()
    for axis, name, color, label in (
        (ax, "norm", "#666666", "latent norm ‖h‖"),
        (right, "energy", "#e7298a", "token energy"),
    ):
        axis.plot(x, norms[f"{name}_mean"], color=color, lw=2, label=label)
        axis.fill_between(x, norms[f"{name}_lo"], norms[f"{name}_hi"], color=color, alpha=0.2, lw=0)
        axis.set_ylabel(label, color=color)
    ax.set_xlabel(LAYER_LABEL)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
