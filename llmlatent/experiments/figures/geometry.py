"""Figures of the geometry experiment (MDS of latent paths, latent norm beside token energy) and the paper's own
Llama-2 lines as a dashed reference overlay; the styles and atomic saving of
:mod:`llmlatent.experiments.figures.plots`."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection

from llmlatent.errors import DataError
from llmlatent.experiments.figures import plots
from llmlatent.experiments.figures.plots import COLORS, LAYER_LABEL, styled
from llmlatent.experiments.settings import content_digest
from llmlatent.languages import registry as languages


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
    ax.legend(
        handles,
        ["token (unembedding)", "latent", f"target word ({languages.label(tgt)})", "English word"],
        fontsize=7,
        loc="best",
    )
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


PAPER_LINES = "R/data/data_for_sphere_plots"  # in a clone of epfl-dlab/llm-latent-language
PAPER_SIZES = ("7b", "13b", "70b")
PAPER_COLUMNS = ("entropy", "energy", "en", "zh")  # one row per layer, 1-based, no layer column


def read_paper_lines(repo: str | Path) -> dict[str, pd.DataFrame]:
    """Return {size: frame} of the paper's Llama-2 translate-to-zh lines (``{size}_zh_lines.csv``) found in a clone.

    Each frame has the file's columns (entropy in bits, energy, p(en), p(zh)) plus ``layer`` (1-based, as the
    paper counts: row j is after block j) and ``depth`` = layer / n_layers, the relative depth on which they
    are drawn beside a model with another number of layers (0-based layer i there is at depth (i+1)/L).
    """
    folder = Path(repo) / PAPER_LINES
    if not folder.is_dir():
        raise DataError(
            f"--paper-repo {repo}: no {PAPER_LINES} folder there; pass a clone of epfl-dlab/llm-latent-language"
        )
    found = {}
    for size in PAPER_SIZES:
        path = folder / f"{size}_zh_lines.csv"
        if not path.exists():
            continue
        try:
            frame = pd.read_csv(path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{path} is not a CSV ({exc}); expected the columns {','.join(PAPER_COLUMNS)}") from exc
        missing = [c for c in PAPER_COLUMNS if c not in frame]
        values = frame[[c for c in PAPER_COLUMNS if c in frame]].apply(pd.to_numeric, errors="coerce")
        if missing or len(frame) < 2 or not np.isfinite(values.to_numpy()).all():
            problem = f"lacks {', '.join(missing)}" if missing else "has fewer than 2 rows or a non-numeric value"
            raise DataError(f"{path} {problem}; expected one numeric row per layer: {','.join(PAPER_COLUMNS)}")
        values.insert(0, "layer", np.arange(1, len(values) + 1))
        values["depth"] = values["layer"] / len(values)
        found[size] = values
    if not found:
        raise DataError(f"--paper-repo {repo}: {folder} holds no {{7b,13b,70b}}_zh_lines.csv")
    return found


OVERLAYS = {  # figure → [(our summary column, the paper's column, label, colour)]
    "probabilities": [
        ("p_target_mean", "zh", "p(target)", COLORS["target"]),
        ("p_english_mean", "en", "p(English)", COLORS["english"]),
    ],
    "entropy": [("entropy_mean", "entropy", "entropy (bits)", "#444444")],
    "energy": [("energy_mean", "energy", "token energy", "#e7298a")],
}


@styled
def overlay_figure(summary: pd.DataFrame, lines: dict[str, pd.DataFrame], kind: str, title: str = "") -> plt.Figure:
    """Return one of our curves (solid) with the paper's Llama-2 lines (dashed, one dash style per size) over
    relative depth: ``kind`` is probabilities, entropy or energy."""
    fig, ax = plt.subplots(figsize=(6, 3))
    depth = (summary["layer"].to_numpy() + 1) / len(summary)  # after block i of L: depth (i + 1) / L
    dashes = {"7b": (4, 2), "13b": (2, 2), "70b": (6, 2, 1, 2)}
    for ours, theirs, label, color in OVERLAYS[kind]:
        ax.plot(depth, summary[ours], color=color, lw=2, label=f"{label}, this model")
        for size, frame in lines.items():
            ax.plot(
                frame["depth"],
                frame[theirs],
                color=color,
                lw=1.2,
                dashes=dashes[size],
                alpha=0.8,
                label=f"{label}, Llama-2-{size} (paper, →zh)",
            )
    ax.set_xlabel("relative depth (after block i of L: (i + 1) / L)")
    ax.set_ylabel(OVERLAYS[kind][0][2] if kind != "probabilities" else "probability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def check_overlay(meta: dict) -> None:
    """Return None if the paper's lines may be drawn beside curves of prompts with ``meta``.

    The lines are the paper's translations into Chinese: a known task other than translation or a known
    target other than zh is refused with one line (Llama-2's p(zh) beside a p(German) would read as a
    comparison it is not); prompts that record neither (a prompt file) are drawn, labelled "→zh".
    """
    task, tgt = meta.get("task"), meta.get("tgt")
    if task not in (None, "translation") or tgt not in (None, "zh"):
        raise DataError(
            f"--paper-repo: the paper's lines are its translations into Chinese, these prompts are {task} into "
            f"{tgt}; sweep --task translation --tgt zh, or drop --paper-repo"
        )


def lines_digest(repo: str | Path) -> str:
    """Return a sha256 over the CSVs of the paper's lines folder in ``repo``: what a figure drawn from them used."""
    return content_digest(Path(repo) / PAPER_LINES)


def write_overlays(summary: pd.DataFrame, lines: dict[str, pd.DataFrame], title: str, stem: Path) -> list[Path]:
    """Return the files written: ``{stem}_{kind}.png/.pdf`` of :func:`overlay_figure` for every kind."""
    written = []
    for kind in OVERLAYS:
        fig = overlay_figure(summary, lines, kind, title)
        written += plots.save(fig, stem.with_name(f"{stem.name}_{kind}"))
        plt.close(fig)
    return written
