"""The lens sweep, the paper's main experiment, and the model of every experiment's shape.

An experiment is a frozen settings dataclass (defaults and validation once), ``compute`` and ``write``,
registered with :func:`llmlatent.experiments.runs.register`; :func:`llmlatent.experiments.runs.run`
caches, writes atomically and records. For the sweep::

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
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from llmlatent import checks
from llmlatent.errors import DataError
from llmlatent.experiments import runs
from llmlatent.experiments.settings import Settings, flag_name, option
from llmlatent.languages.registry import check_lang, parse_codes
from llmlatent.provenance import prompts_digest, sets_table
from llmlatent.tasks import TASKS, PromptSet

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmlatent.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSettings(Settings):
    """Which prompts: a task over word lists (bundled or ``words``), or a saved prompt file (``prompts``)."""

    task: str | None = option(None, "translation, repetition or cloze (default translation)", choices=TASKS)
    src: str | None = option(None, "source language (default fr, or --tgt for repetition); ignored for cloze")
    tgt: str | None = option(None, "target language (default zh)")
    n_prompts: int | None = option(None, "number of prompts (default: all that pass the filters)", aliases=("--n",))
    seed: int = option(0, "seed of the few-shot examples and of the prompt draw")
    strict: bool = option(False, "strict token sets (no 1-character prefixes for alphabetic words)")
    cognate_filter: bool = option(False, "drop concepts whose source and English token sets intersect")
    words: str | None = option(None, "folder of word CSVs (bundled or seed layout)", digest=True)
    prompts: str | None = option(
        None, "saved prompt CSV in the seed layout (prompt, out_token_str, latent_token_str)", digest=True
    )
    batch_size: int = option(16, "prompts per forward (does not change the numbers)", key=False)
    latent: tuple[str, ...] = option(
        ("en",), "latent languages: a curve p(concept in L) per layer for each L (en: the paper's p_english)"
    )
    latent_overlap: str = option(
        "mark", "concepts whose latent-language set intersects the target's: mark (keep, count) or drop (from that "
        "curve)", choices=("mark", "drop"),
    )  # fmt: skip

    def __post_init__(self) -> None:
        self._set("latent", parse_codes(self.latent, self.words, flag="--latent"))
        checks.count(self.n_prompts, "n_prompts", optional=True, flag="--n-prompts")
        checks.count(self.batch_size, "batch_size")
        if self.words and self.prompts:
            self.fail("--words and --prompts exclude each other: a prompt file already holds its words")
        if self.prompts:
            self._check_prompt_file()
            return
        task = self.task or "translation"
        tgt = check_lang(self.tgt or "zh", self.words)
        src = check_lang(self.src, self.words) if self.src else ("fr" if task == "translation" else tgt)
        if task == "translation" and src == tgt:
            raise DataError(f"translation needs two different languages (got {tgt}→{tgt}); use --task repetition")
        self._set("task", task), self._set("tgt", tgt), self._set("src", src)
        if self.words:  # empty, non-UTF-8 or duplicate-concept word files fail now, not after the model load
            from llmlatent.languages import words as data

            with checks.quiet(data.log):
                data.read_table(["en", src, tgt], self.words)

    def _check_prompt_file(self) -> None:
        from llmlatent.languages import words as data

        checks.input_file(self.prompts, "prompts")
        given = [f"--{k.replace('_', '-')}" for k in ("task", "src", "tgt", "cognate_filter") if getattr(self, k)]
        if given:
            self.fail(
                f"--prompts {self.prompts} already defines the prompts; drop {', '.join(given)} (they would be ignored)"
            )
        with checks.quiet(data.log):  # an empty, non-UTF-8 or malformed file fails now; its warnings come later
            data.read_prompt_file(self.prompts)

    def build(self, tokenizer: PreTrainedTokenizerBase) -> PromptSet:
        """Return the prompt set these settings name, for ``tokenizer``."""
        from llmlatent import tasks
        from llmlatent.latent_sets import add_latent_sets

        if self.prompts:
            built = tasks.from_prompt_file(
                self.prompts, tokenizer, strict=self.strict, n=self.n_prompts, seed=self.seed
            )
        else:
            built = self._build_task(tokenizer)
        return add_latent_sets(
            built, self.latent, tokenizer, words_dir=self.words, strict=self.strict, overlap=self.latent_overlap
        )

    def _build_task(self, tokenizer: PreTrainedTokenizerBase) -> PromptSet:
        from llmlatent import tasks

        return tasks.build(
            self.task,
            self.src,
            self.tgt,
            tokenizer,
            n=self.n_prompts,
            seed=self.seed,
            words_dir=self.words,
            strict=self.strict,
            cognate_filter=self.cognate_filter,
        )


@dataclass(frozen=True)
class SweepSettings(PromptSettings):
    """A lens sweep: p(target), p(English), p(source), entropy and energy per layer, with 95% intervals."""

    ci: str = option(
        "normal", "95% intervals: normal approximation (as the paper) or bootstrap", choices=("normal", "bootstrap")
    )
    from_latents: str | None = option(
        None, "latent store to sweep with no forward pass (--model then names the head: final norm + unembedding only)",
        key=False,  # its content enters the key (key_inputs), not its path
    )  # fmt: skip
    paper_repo: str | None = option(
        None, "a clone of epfl-dlab/llm-latent-language: its Llama-2 →zh lines dashed beside these curves "
        "(paper_overlay_*.png, relative depth)", key=False,  # the lines' content enters the key (key_inputs)
    )  # fmt: skip
    prompt_set: PromptSet | None = option(None, "prompts built in Python (tasks.custom …)", key=False, cli=False)
    progress: bool = option(True, "progress bar", key=False, cli=False)

    def __post_init__(self) -> None:
        if self.from_latents is not None or self.prompt_set is not None:  # PromptSettings' check is skipped
            self._set("latent", parse_codes(self.latent, self.words, flag="--latent"))
        if self.from_latents is not None:
            self._check_store()
        elif self.prompt_set is not None:
            if len(self.prompt_set) == 0:
                self.fail("the prompt set is empty; build one with at least one prompt")
            checks.count(self.batch_size, "batch_size")
        else:
            super().__post_init__()
        if self.paper_repo is not None:  # no lines there, or another task or target: one line before any work
            from llmlatent.experiments.figures.geometry import overlay_lines

            overlay_lines(self.paper_repo, self._named_prompts_meta())

    def _named_prompts_meta(self) -> dict:
        """Return what the settings already say of the prompts' task and target (a prompt file: nothing)."""
        if self.from_latents is not None:
            from llmlatent.latents.format import read_config

            return read_config(Path(self.from_latents))["meta"]
        if self.prompt_set is not None:
            return self.prompt_set.meta
        return {} if self.prompts else {"task": self.task, "tgt": self.tgt}

    def _check_store(self) -> None:
        from llmlatent.latents.format import read_config

        # the intervals' seed; prompts per decoding batch; latent languages (sets made for the head's tokenizer)
        kept = ("seed", "batch_size", "latent", "latent_overlap", "words")
        given = [f.name for f in fields(PromptSettings) if f.name not in kept and getattr(self, f.name) != f.default]
        if given or self.prompt_set is not None:
            names = ", ".join(flag_name(n) for n in given) or "prompt_set"
            self.fail(f"--from-latents {self.from_latents} already holds its prompts; drop {names}")
        read_config(Path(self.from_latents))  # not a store: one line now, before the head is loaded

    def prompts_for(self, model: Model) -> PromptSet:
        """Return the prompt set of this sweep (the given one, the store's, or the one the settings name, for the
        model's tokenizer)."""
        from llmlatent.latent_sets import add_latent_sets

        if self.from_latents is None and self.prompt_set is None:
            return self.build(model.tokenizer)
        if self.from_latents is not None:
            from llmlatent import latents

            given = latents.load(self.from_latents, verify=False).prompt_set()
        else:
            given = self.prompt_set
        if self.latent == ("en",):  # the paper's latent language: the sets are the given ones
            return given
        options = {"words_dir": self.words, "strict": bool(given.meta.get("strict")), "overlap": self.latent_overlap}
        return add_latent_sets(given, self.latent, model.tokenizer, **options)

    def key_inputs(self, model: Model) -> dict:
        """Return the model-dependent inputs of the key: the prompts' meta and a digest of prompts and token sets
        (a sweep from a latent store: the store's content digest)."""
        if self.from_latents is not None:
            from llmlatent.latents.shards import store_digest

            inputs = {"latent_store_sha256": store_digest(self.from_latents)}
        else:
            prompts = self.prompts_for(model)
            inputs = {"prompt_meta": prompts.meta, "prompts_sha256": prompts_digest(prompts)}
        if self.paper_repo is not None:  # the overlay figures' lines
            from llmlatent.experiments.figures.geometry import lines_digest

            inputs["paper_lines_sha256"] = lines_digest(self.paper_repo)
        return inputs


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
    if settings.from_latents is not None:  # model: a LoadedHead (or a Model); no forward pass
        store = latents.load(settings.from_latents)
        rows = lens.from_latents(
            store, model, batch_size=settings.batch_size, progress=settings.progress, prompts=prompts.df
        )
    else:
        rows = lens.sweep(
            model, prompts, batch_size=settings.batch_size, seed=settings.seed, progress=settings.progress
        )
    seconds = time.perf_counter() - started
    rows.insert(1, "concept", rows["prompt_id"].map(dict(zip(prompts.df["prompt_id"], prompts.df["concept"]))))
    summary = metrics.summarize(rows, ci=settings.ci, seed=settings.seed)
    if settings.paper_repo is not None:
        from llmlatent.experiments.figures.geometry import overlay_lines

        lines = overlay_lines(settings.paper_repo, prompts.meta)  # a prompt file's target is known now
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


EXPERIMENT = runs.register(
    runs.Experiment("sweep", SweepSettings, compute, write, headline=HEADLINE, describe=describe)
)


def sweep_to_dir(
    model: Model,
    prompts: PromptSet,
    out: str | Path,
    *,
    batch_size: int = 16,
    seed: int = 0,
    ci: str = "normal",
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Return run.json's content after sweeping a prompt set built in Python into ``out`` (:func:`runs.run`)."""
    settings = SweepSettings(prompt_set=prompts, batch_size=batch_size, seed=seed, ci=ci, progress=progress)
    return runs.run(settings, model, out, force=force)


def sweep_key(model: Model, prompts: PromptSet, *, seed: int = 0, ci: str = "normal") -> dict:
    """Return the cache key of sweeping ``prompts`` on ``model`` (batch size is no part of it: it changes nothing)."""
    return runs.key_of(SweepSettings(prompt_set=prompts, seed=seed, ci=ci), model)
