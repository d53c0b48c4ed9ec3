"""The paper's figure styles, drawn from tidy summaries. Every ``save`` writes PNG and PDF.

Layer rule (everywhere in llmlatent): ``layer`` i is the residual stream after block i, 0-based;
plots show the same numbers on an x-axis labelled "layer (after block, 0-based)".

Importing this module changes no global matplotlib setting: every figure builder (decorated with
:func:`styled`) and :func:`save` run inside ``plt.rc_context(RC)``, which adds Noto Sans CJK as a glyph
fallback. Saved files are byte-identical across runs (no creation date in the PDF).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from llmlatent.atomic import atomic_file
from llmlatent.experiments.figures import precision
from llmlatent.languages import registry as languages

P = ParamSpec("P")
R = TypeVar("R")


def _cjk_rc() -> dict:
    """Return the rc settings that add Noto Sans CJK (PyPI cvttf-notosanscjk-regular) as a fallback after DejaVu Sans.

    Registering the font file with the font manager is not a setting; ``font.family`` is only applied per figure.
    """
    import importlib.util

    from matplotlib import font_manager

    spec = importlib.util.find_spec("cvttf_NotoSansCJK_Regular")
    if spec is None or not spec.submodule_search_locations:
        return {}
    for font in Path(list(spec.submodule_search_locations)[0]).glob("*.otf"):
        font_manager.fontManager.addfont(str(font))
        return {"font.family": ["DejaVu Sans", font_manager.FontProperties(fname=str(font)).get_name()]}
    return {}


RC = _cjk_rc()
# PDF metadata that varies between runs is dropped, so `make reproduce` leaves a clean git tree
# (matplotlib writes CreationDate = now unless given None; PNG metadata holds no date)
PDF_METADATA = {"CreationDate": None}


@contextmanager
def style() -> Iterator[None]:
    """Yield inside the package's figure settings (``plt.rc_context(RC)``); the global settings are untouched."""
    with plt.rc_context(RC):
        yield


def styled(builder: Callable[P, R]) -> Callable[P, R]:
    """Return ``builder`` wrapped to run inside :func:`style` (texts keep the CJK fallback), drawing from its
    arguments' floats rounded to 4 significant digits (:func:`~llmlatent.experiments.figures.precision.shown`: float
    noise across machines moves no pixel)."""

    @functools.wraps(builder)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with style():
            return builder(*map(precision.shown, args), **{k: precision.shown(v) for k, v in kwargs.items()})

    return wrapper


LAYER_LABEL = "layer (after block, 0-based)"
COLORS = {"target": "#d95f02", "english": "#1b9e77", "source": "#7570b3"}


def save(fig: plt.Figure, path_stem: str | Path) -> list[Path]:
    """Return the PNG and PDF paths written for ``fig`` at ``path_stem`` (suffix ignored)."""
    stem = Path(path_stem).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    with style():  # each file through a temporary name and a rename: a killed run never leaves a 0-byte figure
        with atomic_file(paths[0]) as tmp:
            fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
        with atomic_file(paths[1]) as tmp:
            fig.savefig(tmp, format="pdf", bbox_inches="tight", metadata=PDF_METADATA)
    return paths


def _label(name: str, meta: dict) -> str:
    lang = {"target": meta.get("tgt"), "english": "en", "source": meta.get("src")}.get(name)
    return f"{name} ({languages.label(lang)})" if lang else name


LATENT_COLORS = ("#e6ab02", "#e7298a", "#66a61e", "#a6761d", "#1f78b4", "#666666", "#b15928", "#6a3d9a")


def curves(summary: pd.DataFrame, meta: dict | None = None) -> list[tuple[str, str, str, str]]:
    """Return (name, colour, line style, legend label) of every probability curve a summary holds: target, English,
    source, then each latent language (dashed) other than the target and source, whose curves those already are."""
    meta = meta or {}
    out = [(name, color, "-", _label(name, meta)) for name, color in COLORS.items()]
    codes = [
        c[len("p_latent_") : -len("_mean")]
        for c in summary.columns
        if c.startswith("p_latent_") and c.endswith("_mean")
    ]
    for i, code in enumerate(codes):  # a language keeps its colour in every panel of a grid
        if code not in _shown(meta):
            color = LATENT_COLORS[i % len(LATENT_COLORS)]
            out.append((f"latent_{code}", color, "--", f"latent {code} ({languages.label(code)})"))
    return out


def _shown(meta: dict) -> set[str]:
    """Return the languages whose concept curve is already drawn as p_target or p_source."""
    shown = {meta.get("tgt")}
    if meta.get("task") == "translation":
        shown.add(meta.get("src"))
    return {lang for lang in shown if lang}


def probability_axes(ax: plt.Axes, summary: pd.DataFrame, meta: dict | None = None, *, legend: bool = True) -> None:
    """Draw p(target), p(English), p(source) and every latent language's p per layer with 95% bands on ``ax``."""
    x = summary["layer"].to_numpy()
    for name, color, style, label in curves(summary, meta):
        mean = summary.get(f"p_{name}_mean")
        if mean is None or mean.isna().all():
            continue
        ax.plot(x, mean, style, color=color, label=label, lw=2)
        ax.fill_between(x, summary[f"p_{name}_lo"], summary[f"p_{name}_hi"], color=color, alpha=0.2, lw=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(x.min(), x.max())
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(loc="upper left", fontsize=8, frameon=False)


@styled
def probability_figure(summary: pd.DataFrame, meta: dict | None = None, title: str | None = None) -> plt.Figure:
    """Return the paper's main figure: an entropy colour strip above probability lines with 95% bands."""
    fig, (strip, ax) = plt.subplots(
        2, 1, figsize=(6, 4), sharex=True, gridspec_kw={"height_ratios": [1, 8], "hspace": 0.05}
    )
    x = summary["layer"].to_numpy()
    entropy = summary["entropy_mean"].to_numpy()[None, :]
    image = strip.imshow(entropy, aspect="auto", cmap="viridis", extent=(x.min() - 0.5, x.max() + 0.5, 0, 1))
    strip.set_yticks([])
    strip.set_ylabel("H", rotation=0, labelpad=10, va="center")
    cbar = fig.colorbar(image, ax=[strip, ax], location="right", fraction=0.04, pad=0.02)
    cbar.set_label("entropy (bits)")
    probability_axes(ax, summary, meta)
    ax.set_xlim(x.min() - 0.5, x.max() + 0.5)
    ax.set_xlabel(LAYER_LABEL)
    if title:
        strip.set_title(title, fontsize=10)
    return fig


@styled
def energy_figure(summary: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """Return the token-energy figure: mean energy per layer with its 95% band."""
    fig, ax = plt.subplots(figsize=(6, 3))
    x = summary["layer"].to_numpy()
    ax.plot(x, summary["energy_mean"], color="#e7298a", lw=2, label="token energy")
    if "energy_lo" in summary:
        ax.fill_between(x, summary["energy_lo"], summary["energy_hi"], color="#e7298a", alpha=0.2, lw=0)
    ax.set_xlabel(LAYER_LABEL)
    ax.set_ylabel("energy")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _grid_handles(summaries: dict, skip: tuple[str, ...] = ()) -> list[plt.Line2D]:
    """Return the legend of a grid: target, english, source (but ``skip``), and each latent language the summaries
    hold."""
    handles = {k: plt.Line2D([], [], color=c, lw=2, label=k) for k, c in COLORS.items() if k not in skip}
    for summary in summaries.values():
        for name, color, style, _ in curves(summary):
            if name in skip:
                continue
            label = name.replace("latent_", "latent ")
            handles.setdefault(label, plt.Line2D([], [], color=color, ls=style, lw=2, label=label))
    return list(handles.values())


@styled
def pair_grid(summaries: dict[tuple[str, str], pd.DataFrame], langs: list[str], title: str | None = None) -> plt.Figure:
    """Return a src × tgt grid of probability panels; panels with target ≠ English are highlighted."""
    n = len(langs)
    fig, axes = plt.subplots(n, n, figsize=(2.6 * n, 2.0 * n), sharex=True, sharey=True, squeeze=False)
    for i, src in enumerate(langs):
        for j, tgt in enumerate(langs):
            ax = axes[i, j]
            summary = summaries.get((src, tgt))
            if summary is None:
                ax.axis("off")
                continue
            probability_axes(ax, summary, {"src": src, "tgt": tgt, "task": "translation"}, legend=False)
            ax.set_ylabel("")
            ax.set_title(f"{src}→{tgt}", fontsize=9)
            if tgt != "en":
                for spine in ax.spines.values():
                    spine.set_edgecolor("#d95f02")
                    spine.set_linewidth(1.5)
    fig.legend(handles=_grid_handles(summaries), loc="upper right", ncol=3, frameon=False)
    fig.supxlabel(LAYER_LABEL)
    fig.supylabel("probability")
    if title:
        fig.suptitle(title)
    return fig


@styled
def heatmap(
    values: pd.DataFrame,
    *,
    text: pd.DataFrame | None = None,
    title: str | None = None,
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "viridis",
    fmt: str = ".2f",
    vmin: float | None = None,
    vmax: float | None = None,
) -> plt.Figure:
    """Return an annotated heatmap of a 2-D frame (cells show ``text`` if given, else the values)."""
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * cols + 2), max(3, 0.35 * rows + 1.5)))
    image = ax.imshow(values.to_numpy(dtype=float), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(cols), [str(c) for c in values.columns], rotation=45, ha="right")
    ax.set_yticks(range(rows), [str(r) for r in values.index])
    data = values.to_numpy(dtype=float)
    finite = data[np.isfinite(data)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for r in range(rows):
        for c in range(cols):
            label = str(text.iat[r, c]) if text is not None else format(data[r, c], fmt)
            ax.text(
                c,
                r,
                label,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if np.isfinite(data[r, c]) and data[r, c] < mid else "black",
            )
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


@styled
def top_token_heatmap(table: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """Return the hand-prompt figure: layers × rank, cell text = token, colour = probability."""
    probs = table.pivot(index="layer", columns="rank", values="prob").sort_index(ascending=False)
    tokens = table.pivot(index="layer", columns="rank", values="token").sort_index(ascending=False)
    tokens = tokens.map(lambda t: repr(t)[1:-1].replace(" ", "␣")[:10])
    return heatmap(probs, text=tokens, title=title, xlabel="rank", ylabel=LAYER_LABEL, vmin=0, vmax=1)


@styled
def position_heatmap(table: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """Return the logit-lens-plot figure: layers × last positions, cell text = top token, colour = its probability.

    ``table`` is :func:`llmlatent.lens.last_token.top_tokens_positions` output (rank 1 is used); columns are
    labelled ``position: input token`` and the last layer is drawn on top.
    """
    top = table[table["rank"] == 1] if "rank" in table else table
    probs = top.pivot(index="layer", columns="position", values="prob").sort_index(ascending=False)
    tokens = top.pivot(index="layer", columns="position", values="top_token").sort_index(ascending=False)

    def shown(token: str, width: int) -> str:  # escapes visible, spaces as ␣
        return repr(token)[1:-1].replace(" ", "\u2423")[:width]

    tokens = tokens.map(lambda t: shown(t, 10))
    inputs = top.drop_duplicates("position").set_index("position")["input_token"]
    labels = [f"{p}: {shown(inputs[p], 12)}" for p in probs.columns]
    probs.columns = tokens.columns = labels
    return heatmap(probs, text=tokens, title=title, xlabel="position: input token", ylabel=LAYER_LABEL, vmin=0, vmax=1)


@styled
def task_row(summaries: dict[tuple[str, str], pd.DataFrame], task: str, title: str | None = None) -> plt.Figure:
    """Return one row of probability panels, one per language (the repetition or cloze row of the paper's figure)."""
    fig, axes = plt.subplots(1, len(summaries), figsize=(2.8 * len(summaries), 2.6), sharey=True, squeeze=False)
    for ax, ((src, tgt), summary) in zip(axes[0], sorted(summaries.items())):
        probability_axes(ax, summary, {"src": src, "tgt": tgt}, legend=False)
        ax.set_title(f"{task} {tgt}", fontsize=9)
    axes[0][0].legend(
        fontsize=7,
        frameon=False,
        loc="upper left",
        handles=_grid_handles(summaries, skip=("source",)),
    )
    fig.supxlabel(LAYER_LABEL)
    if title:
        fig.suptitle(title)
    return fig


@styled
def variants_figure(summaries: dict[str, pd.DataFrame], title: str | None = None) -> plt.Figure:
    """Return p(English) (solid) and p(target) (dashed, same colour) per layer for each named variant of one
    experiment."""
    fig, ax = plt.subplots(figsize=(6, 3))
    for label, summary in summaries.items():
        (line,) = ax.plot(summary["layer"], summary["p_english_mean"], label=f"English · {label}")
        ax.plot(summary["layer"], summary["p_target_mean"], ls="--", color=line.get_color())
    ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]  # a MaxNLocator
    ax.set_xlabel(LAYER_LABEL)
    ax.set_ylabel("probability (dashed: target)")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


@styled
def steering_heatmap(summary: pd.DataFrame, direction: str, model_name: str = "", split: str = "select") -> plt.Figure:
    """Return the layer × α heatmap of one steering direction on ``split``: colour = target-script top-1 share.

    ``summary`` is :func:`llmlatent.experiments.steering.report.summarize` output; cell text = that share and the mean
    p(correct answer); the α = 0 column is the baseline (the same for every layer).
    """
    part = summary[(summary["direction"] == direction) & (summary["vector"] == "mean_difference")]
    if "split" in part:
        part = part[part["split"] == split]
    base = part[part["alpha"] == 0].iloc[0]
    steered = part[part["alpha"] != 0]
    layers = sorted(int(x) for x in steered["layer"].unique())
    alphas = [0.0] + sorted(steered["alpha"].unique())
    share = pd.DataFrame(index=layers, columns=[f"{a:g}" for a in alphas], dtype=float)
    text = pd.DataFrame(index=layers, columns=share.columns, dtype=object)
    for ell in layers:
        for a in alphas:
            row = base if a == 0 else steered[(steered["layer"] == ell) & (steered["alpha"] == a)].iloc[0]
            share.loc[ell, f"{a:g}"] = row["target_script_top1_share"]
            text.loc[ell, f"{a:g}"] = f"{row['target_script_top1_share']:.2f}\np={row['p_target_answer']:.2f}"
    towards = direction.split("→")[1]
    title = f"steering {direction} ({split} split): top-1 in {towards} script (p = correct answer) · {model_name}"
    return heatmap(
        share.iloc[::-1],
        text=text.iloc[::-1],
        title=title,
        xlabel="α (multiple of Δ; 0 = baseline)",
        ylabel=LAYER_LABEL,
        vmin=0,
        vmax=1,
    )


@styled
def latent_languages_figure(summaries: dict[tuple[str, str], pd.DataFrame], title: str | None = None) -> plt.Figure:
    """Return one panel per translation pair: p(target) solid and every latent language's p(concept) dashed, with a
    shared legend (each language keeps its colour in every panel)."""
    fig, axes = plt.subplots(1, len(summaries), figsize=(3.4 * len(summaries), 3.0), sharey=True, squeeze=False)
    for ax, ((src, tgt), summary) in zip(axes[0], summaries.items()):
        # the source language is drawn as a latent language (its curve is p_source); English is p_english
        latent_only = summary.drop(columns=[c for c in summary if c.startswith("p_source_")])
        probability_axes(ax, latent_only, {"src": src, "tgt": tgt}, legend=False)
        ax.set_title(f"{src}→{tgt}", fontsize=9)
    handles = _grid_handles(summaries, skip=("source",))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.93), ncol=5, frameon=False, fontsize=7)
    fig.supxlabel(LAYER_LABEL)
    fig.tight_layout(rect=(0, 0, 1, 0.78))
    if title:
        fig.suptitle(title, y=0.99, fontsize=10)
    return fig
