"""The lens sweep, the paper's main experiment, and the model of every experiment's shape.

An experiment is a frozen settings dataclass (defaults and validation once), ``compute`` and ``write``,
declared as one ``EXPERIMENT`` and listed in :data:`llmlatent.experiments.EXPERIMENTS`;
:func:`llmlatent.experiments.runs.run` caches, writes atomically and records. For the sweep::

    settings = SweepSettings(task="translation", src="fr", tgt="zh", n_prompts=50)
    record = runs.run(settings, model, "results/translation/fr-zh")      # or reuses a matching folder
    result = compute(model, settings)                                      # the same, in memory
    # result.rows: one row per (prompt, layer); result.summary: mean and 95% interval per layer

``python -m llmlatent sweep`` takes one flag per field (:mod:`llmlatent.experiments.settings`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pandas as pd

from llmlatent.experiments.base import Experiment
from llmlatent.experiments.prompts import GivenPrompts, PromptSettings, PromptSource, StorePrompts
from llmlatent.experiments.settings import flag_name, option
from llmlatent.provenance import sets_table
from llmlatent.tasks import PromptSet

if TYPE_CHECKING:
    from llmlatent.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSettings(PromptSettings):
    """A lens sweep: p(target), p(English), p(source), entropy and energy per layer, with 95% intervals.

    The prompts come from one source (:attr:`source`, :mod:`llmlatent.experiments.prompts`): a task or a
    prompt file (the fields of :class:`PromptSettings`), a latent store (``from_latents``) or a prompt set
    built in Python (``prompt_set``).
    """

    ci: str = option(
        "normal", "95% intervals: normal approximation (as the paper) or bootstrap", choices=("normal", "bootstrap")
    )
    from_latents: str | None = option(
        None,
        "latent store to sweep with no forward pass (--model then names the head: final norm + unembedding only)",
        key=False,  # its content enters the key (key_inputs), not its path
    )
    paper_repo: str | None = option(
        None,
        "a clone of epfl-dlab/llm-latent-language: its Llama-2 →zh lines dashed beside these curves "
        "(paper_overlay_*.png, relative depth)",
        key=False,  # the lines' content enters the key (key_inputs)
    )
    prompt_set: PromptSet | None = option(None, "prompts built in Python (tasks.custom …)", key=False, cli=False)
    progress: bool = option(True, "progress bar", key=False, cli=False)

    def __post_init__(self) -> None:
        if self.from_latents is None and self.prompt_set is None:
            super().__post_init__()
            return
        self._check_values()
        # the intervals' seed; prompts per decoding batch; latent languages (sets made for the head's tokenizer)
        kept = ("seed", "batch_size", "latent", "latent_overlap", "words_dir")
        given = [f.name for f in fields(PromptSettings) if f.name not in kept and getattr(self, f.name) != f.default]
        if self.from_latents is not None and (given or self.prompt_set is not None):
            names = ", ".join(flag_name(n) for n in given) or "prompt_set"
            self.fail(f"--from-latents {self.from_latents} already holds its prompts; drop {names}")
        if self.prompt_set is not None:
            GivenPrompts(self.prompt_set).check()  # in memory: checked now

    @property
    def source(self) -> PromptSource:
        """Return the prompt source of this sweep: the latent store, the given set, or the task or file named."""
        if self.from_latents is not None:
            return StorePrompts(self.from_latents)
        if self.prompt_set is not None:
            return GivenPrompts(self.prompt_set)
        return super().source

    def preflight(self) -> None:
        """Return None after checking the files (languages, the source's files, the paper's lines) before any work."""
        super().preflight()
        if self.paper_repo is not None:  # no lines there, or another task or target: one line before any work
            from llmlatent.experiments.figures.geometry import check_overlay

            check_overlay(self.source.meta())
            paper_lines(self.paper_repo)

    def prompts_for(self, model: Model) -> PromptSet:
        """Return the prompt set of this sweep (the given one, the store's, or the one the settings name, for the
        model's tokenizer)."""
        from llmlatent.latent_sets import add_latent_sets

        source = self.source
        if not isinstance(source, StorePrompts | GivenPrompts):
            return self.build(model.tokenizer)
        given = source.build()
        if self.latent == ("en",):  # the paper's latent language: the sets are the given ones
            return given
        strict = bool(given.meta.get("strict"))
        return add_latent_sets(
            given, self.latent, model.tokenizer, words_dir=self.words_dir, strict=strict, overlap=self.latent_overlap
        )

    def key_inputs(self, model: Model) -> dict:
        """Return the model-dependent inputs of the key: digests of what the prompts are built from (no prompt is
        built) and of the paper's lines."""
        inputs = self.prompts_digest(getattr(model, "tokenizer", None))
        if self.paper_repo is not None:  # the overlay figures' lines
            inputs["paper_lines_sha256"] = paper_lines(self.paper_repo)[1]
        return inputs


def paper_lines(repo: str | Path) -> tuple[dict[str, pd.DataFrame], str]:
    """Return (the paper's lines of ``repo``, their sha256), read once per content of the lines folder.

    The memo is keyed on the folder and every CSV's name, size and modification time there, so preflight, the
    cache key and the figures of one run read the files once, and an edited file is read again.
    """
    from llmlatent.experiments.figures.geometry import PAPER_LINES

    folder = Path(repo).resolve() / PAPER_LINES
    stamp: tuple[tuple[str, int, int], ...] = ()
    if folder.is_dir():
        stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*.csv")))
    return _paper_lines(str(Path(repo).resolve()), stamp)


@lru_cache(maxsize=4)
def _paper_lines(repo: str, _stamp: tuple) -> tuple[dict[str, pd.DataFrame], str]:
    from llmlatent.experiments.figures.geometry import lines_digest, read_paper_lines

    return read_paper_lines(repo), lines_digest(repo)


@dataclass(frozen=True)
class SweepResult:
    """A computed sweep: the prompts (with their token sets as strings), tidy rows, summary, title, timing."""

    prompts: PromptSet
    prompt_table: pd.DataFrame
    rows: pd.DataFrame
    summary: pd.DataFrame
    title: str
    ci: str
    batch_size: int
    sweep_seconds: float
    paper_lines: dict[str, pd.DataFrame] | None = None  # --paper-repo's lines, drawn beside the curves


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


def title_of(meta: dict, model_name: str) -> str:
    """Return a figure title such as ``translation fr→zh · google/gemma-3-270m``."""
    task = meta.get("task", "")
    pair = meta.get("tgt", "") if task == "cloze" else f"{meta.get('src', '')}→{meta.get('tgt', '')}"
    return f"{task} {pair} · {model_name}"


def compute(model: Model, settings: SweepSettings) -> SweepResult:
    """Return the sweep of ``settings`` on ``model``: the lens at the last token after every block, summarised."""
    from llmlatent import latents, metrics
    from llmlatent.lens import last_token as lens

    prompts = settings.prompts_for(model)
    log.info(prompts.report())
    started = time.perf_counter()
    if isinstance(settings.source, StorePrompts):  # model: a LoadedHead (or a Model); no forward pass
        store = latents.load(cast(str, settings.from_latents))  # the source is StorePrompts only for --from-latents
        rows = lens.from_latents(
            store, model, batch_size=settings.batch_size, progress=settings.progress, prompts=prompts
        )
    else:
        rows = lens.sweep(
            model, prompts, batch_size=settings.batch_size, seed=settings.seed, progress=settings.progress
        )
    seconds = time.perf_counter() - started
    rows.insert(1, "concept", rows["prompt_id"].map(dict(zip(prompts.df["prompt_id"], prompts.df["concept"]))))
    summary = metrics.summarize(rows, ci=settings.ci, seed=settings.seed)
    if settings.paper_repo is not None:
        from llmlatent.experiments.figures.geometry import check_overlay

        check_overlay(prompts.meta)  # a prompt file's target is known now
        lines = paper_lines(settings.paper_repo)[0]
    return SweepResult(
        prompts,
        sets_table(prompts, model.tokenizer),
        rows,
        summary,
        title_of(prompts.meta, model.name),
        settings.ci,
        settings.batch_size,
        seconds,
        lines if settings.paper_repo is not None else None,
    )


def write(result: SweepResult, folder: Path) -> dict:
    """Return run.json's own fields after writing rows.csv, summary.csv, prompts.csv and the figures (PNG+PDF)."""
    import matplotlib.pyplot as plt

    from llmlatent.experiments.figures import plots

    result.rows.to_csv(folder / "rows.csv", index=False, float_format="%.8g")
    result.summary.to_csv(folder / "summary.csv", index=False, float_format="%.8g")
    result.prompt_table.to_csv(folder / "prompts.csv", index=False)
    meta = dict(result.prompts.meta)
    for name, fig in (
        ("probabilities", plots.probability_figure(result.summary, meta, result.title)),
        ("energy", plots.energy_figure(result.summary, result.title)),
    ):
        plots.save(fig, folder / name)
        plt.close(fig)
    if result.paper_lines is not None:
        from llmlatent.experiments.figures.geometry import write_overlays

        write_overlays(
            result.summary, result.paper_lines, f"{result.title} vs the paper's Llama-2", folder / "paper_overlay"
        )
        meta["paper_lines"] = sorted(result.paper_lines)  # the sizes drawn; their sha256 is in the key
    return {
        **meta,
        "n_prompts": len(result.prompts),
        "dropped": result.prompts.dropped,
        "token_sets": "prompts.csv: target_tokens, english_tokens, source_tokens (and their _ids)",
        "notes": result.prompts.notes,
        "ci": result.ci,
        "batch_size": result.batch_size,
        **headline(result.summary),
        "sweep_seconds": round(result.sweep_seconds, 3),
    }


def describe(settings: SweepSettings) -> str:
    """Return the settings in a log line."""
    if settings.from_latents is not None:
        return f"latent store {settings.from_latents}"
    if settings.prompt_set is not None:
        return f"{len(settings.prompt_set)} given prompts"
    if settings.prompts:
        return f"prompts of {settings.prompts}"
    return f"{settings.task} {settings.src}→{settings.tgt}"


HEADLINE = ("n_prompts", "seconds", "peak_english", "final_target")  # the record keys the command line prints


EXPERIMENT = Experiment(
    "sweep",
    SweepSettings,
    compute,
    write,
    command="sweep",
    help="per-layer lens over a task's prompts (the paper's main experiment)",
    format_version=3,
    headline=HEADLINE,
    describe=describe,
)
