"""Figures of the activation-patching experiments (:mod:`llmlatent.experiments.patching`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from llmlatent.experiments.figures.plots import styled
from llmlatent.languages import registry as languages

PATCH_COLORS = {"cd_lr": "#d95f02", "cd_ld": "#7570b3", "cr_lr": "#1b9e77", "cr_ld": "#e7298a"}


def _patch_label(name: str, meta: dict) -> str:
    """Return a legend label such as ``donor concept in 中文`` for a token-set column (cd_lr …)."""
    concept = {"cd": "donor concept", "cr": "receiver concept"}[name[:2]]
    lang = (meta.get("receiver" if name.endswith("lr") else "donor") or [None, None])[1]
    return f"{concept} in {languages.label(lang)} (p_{name})"


def _band(ax: plt.Axes, part: pd.DataFrame, column: str, color: str, label: str, style: str = "-") -> None:
    x = part["layer"].to_numpy(dtype=float)
    ax.plot(x, part[f"{column}_mean"], style, color=color, lw=2, label=label)
    ax.fill_between(
        x, part[f"{column}_lo"].astype(float), part[f"{column}_hi"].astype(float), color=color, alpha=0.2, lw=0
    )


@styled
def patching_figure(summary: pd.DataFrame, meta: dict, title: str | None = None) -> plt.Figure:
    """Return the language-before-concept figure: the four token-set probabilities per patched layer (95% bands).

    Dashed lines: the unpatched receiver (its own answer, C_r in L_r, and the donor concept in L_r).
    """
    part = summary[summary["condition"] == "donor"].sort_values("layer")
    base = summary[summary["condition"] == "unpatched"].iloc[0]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, color in PATCH_COLORS.items():
        _band(ax, part, f"p_{name}", color, _patch_label(name, meta))
    for name in ("cr_lr", "cd_lr"):
        ax.axhline(
            base[f"p_{name}_mean"], color=PATCH_COLORS[name], ls="--", lw=1, label=f"unpatched receiver: p_{name}"
        )
    top = max(float(part[[f"p_{n}_hi" for n in PATCH_COLORS]].max().max()), float(base["p_cr_lr_mean"]))
    ax.set_ylim(-0.01, min(1.02, 1.15 * top + 0.02))  # the curves can be small: zoom, the axis says how far
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("patched layer (after block, 0-based)")
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


@styled
def patching_mean_figure(summary: pd.DataFrame, meta: dict, title: str | None = None) -> plt.Figure:
    """Return the mean-over-languages figure: p(donor concept in the receiver's language) and its top-1 rate per layer.

    Lines: the mean of the donor concept's latents over input languages vs one input language; dashed: no patch.
    """
    base = summary[summary["condition"] == "unpatched"].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    langs = ", ".join(meta.get("mean_over") or [])
    single = (meta.get("single_spec") or ["?"])[0]
    for ax, column, ylabel in (
        (axes[0], "p_cd_lr", "p(donor concept in receiver's language)"),
        (axes[1], "top1_cd_lr", "top-1 rate (donor concept)"),
    ):
        for condition, color, label in (
            ("mean", "#d95f02", f"mean over {langs}"),
            ("single", "#7570b3", f"single: {single}"),
        ):
            _band(ax, summary[summary["condition"] == condition].sort_values("layer"), column, color, label)
        ax.axhline(base[f"{column}_mean"], color="black", ls="--", lw=1, label="no patch")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("patched layer (after block, 0-based)")
    axes[0].legend(loc="upper left", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
