"""The language-steering demo: fit Δ = μ_target − μ_source, choose (layer, α) on one split, report on another.

The concepts are cut into three disjoint, seeded splits (:func:`.core.make_splits`): **fit** (Δ is the mean difference
of their last-token latents), **select** (the layer × α grid is evaluated here and the best setting
chosen) and **test** (only the chosen setting and its controls are evaluated here, and these are the
numbers to report). Prompts differ only in the output language (``Français: "nuage" - Русский: "`` vs
``… - 中文: "``). Controls on the test split, all at the chosen layer and α:

* ``random``: ``n_random`` seeded random directions of Δ's norm;
* ``wrong_pair``: the mean difference of another language pair, rescaled to Δ's norm (default
  μ_X − μ_source with X the first of en, de, fr, ru, zh not in {source, target, via}: it leaves the
  source language just as Δ does but heads elsewhere, so any target-language effect it has is not
  specific to Δ);
* the flip direction −Δ on target-answering prompts, with its α chosen on the select split, its own
  ``random`` control and its baseline, reported on the test split.

:func:`compute` reads top to bottom: prompts and splits → fit → grid on select → choose → controls on
test → flip → generations → report. The loop's pieces are :mod:`.core`'s (the benchmark runs the same ones);
settings are scored by :class:`.score.NextToken` (the last prompt token only, on a KV cache of the rest of the
prompt computed once per batch, many settings per forward; the top-1 token judged by its script); the numbers
and best.json come from :mod:`.report`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from tqdm.auto import tqdm

from llmlatent.experiments.base import Clock, Experiment
from llmlatent.experiments.steering import core, score
from llmlatent.experiments.steering.core import Batch, Item, Splits
from llmlatent.experiments.steering.fit import fit_stores, open_stores, rescaled
from llmlatent.experiments.steering.plan import SteeringSettings
from llmlatent.experiments.steering.report import GROUP, best_json, pick, summarize
from llmlatent.steering.vector import SteeringVector, mean_difference

if TYPE_CHECKING:
    from llmlatent.languages.scripts import OutputJudge
    from llmlatent.model import Model

log = logging.getLogger(__name__)


@dataclass
class SteeringResult:
    """What :func:`compute` measured: tidy per-prompt ``rows``, their ``summary``, ``generations``, ``best``,
    ``vectors``."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    generations: pd.DataFrame
    best: dict
    vectors: dict[int, SteeringVector]
    model_name: str = ""


# ---------------------------------------------------------------- the settings each phase evaluates


def grid_items(vectors: dict[int, SteeringVector], pairs: list[tuple[int, float]], sign: int = 1) -> list[Item]:
    """Return the baseline and α·(±Δ) at every (layer, α) of ``pairs``: the grid evaluated on the select split."""
    return [Item.baseline()] + [
        Item.of("mean_difference", 0, vectors[ell] if sign > 0 else -vectors[ell], a) for ell, a in pairs
    ]


def test_items(vector: SteeringVector, alpha: float, randoms: list, wrong: SteeringVector | None = None) -> list[Item]:
    """Return the test-split settings: the baseline, ``alpha · vector`` and its controls (:func:`.core.controls`)."""
    return [Item.baseline(), Item.of("mean_difference", 0, vector, alpha), *core.controls(alpha, randoms, wrong)]


def planned(s: SteeringSettings, vectors: dict[int, SteeringVector]) -> int:
    """Return how many settings the run evaluates, from the same builders the phases use (the progress total)."""
    any_vector = next(iter(vectors.values()))
    draws = [any_vector] * s.n_random
    total = len(grid_items(vectors, [(ell, a) for ell in vectors for a in s.alphas]))
    total += len(test_items(any_vector, 1.0, draws, any_vector))
    if s.flip:
        total += len(grid_items(vectors, [(any_vector.layer, a) for a in s.alphas], sign=-1))
        total += len(test_items(any_vector, 1.0, draws))
    return total


class Evaluator:
    """Runs the demo's settings over prompt batches (:func:`.core.evaluate`, scored by :class:`.score.NextToken`) and
    keeps their rows; one progress bar for the whole run."""

    def __init__(self, total: int, progress: bool, judge: OutputJudge) -> None:
        self.parts: list[pd.DataFrame] = []
        self.judge = judge
        self.bar = tqdm(total=total, desc="steering", unit="setting", disable=not progress)

    def run(self, prompt_batches: list[Batch], direction: str, split: str, items: list[Item]) -> pd.DataFrame:
        """Return (and keep) the rows of each setting in ``items`` on ``prompt_batches``."""
        source, towards = direction.split("→")
        rows = core.evaluate(prompt_batches, items, split, score.NextToken(self.judge, source, towards))
        self.bar.update(len(items))
        self.parts.append(rows)
        return rows

    def rows(self) -> pd.DataFrame:
        """Return every row so far, GROUP columns first, layer as a nullable integer."""
        self.bar.close()
        rows = pd.concat(self.parts, ignore_index=True)
        rows["layer"] = rows["layer"].astype("Int64")
        return rows[GROUP + [c for c in rows.columns if c not in GROUP]]


# ---------------------------------------------------------------- the phases, in the order compute runs them


def prompt_frames(model: Model, s: SteeringSettings) -> tuple[dict[str, pd.DataFrame], Splits]:
    """Return the translation prompts answering in every language the run needs, and the concept splits."""
    langs = list(dict.fromkeys([s.source, s.target, *s.wrong_pair]))
    built = core.prompt_frames(model.tokenizer, [(s.via, lang) for lang in langs], s.seed, s.words_dir)
    frames = {lang: built[(s.via, lang)] for lang in langs}
    return frames, core.make_splits(core.concept_pool(frames), s.seed, s.n_concepts, s.n_flip)


def fit(
    model: Model, s: SteeringSettings, frames: dict[str, pd.DataFrame], splits: Splits, layers: list[int]
) -> tuple[dict[int, SteeringVector], dict[int, SteeringVector], dict]:
    """Return (Δ per layer, the wrong pair's difference per layer, where the fit latents came from)."""
    wrong_to, wrong_from = s.wrong_pair
    with tempfile.TemporaryDirectory(prefix="llmlatent-steer-") as tmp:
        stores, info = fit_stores(
            model,
            frames,
            splits.fit,
            Path(s.latents_dir or tmp),
            reuse_stores=open_stores(s.reuse_stores),
            batch_size=s.batch_size,
            progress=s.progress,
        )
        vectors = {ell: mean_difference(stores[s.target], stores[s.source], ell, concepts=splits.fit) for ell in layers}
        wrong = {ell: mean_difference(stores[wrong_to], stores[wrong_from], ell, concepts=splits.fit) for ell in layers}
    for vec in (*vectors.values(), *wrong.values()):
        vec.meta.update(fit_concepts=splits.fit, seed=s.seed)
    return vectors, wrong, info


def choose(ev: Evaluator, prompt_batches: list[Batch], direction: str, items: list[Item]) -> pd.Series:
    """Return the best setting on the select split after evaluating ``items`` there (:func:`.report.pick`)."""
    ev.run(prompt_batches, direction, "select", items)
    return pick(summarize(pd.concat(ev.parts, ignore_index=True)), direction)


def generation_frame(
    todo: dict[str, list[Item]], held: dict[str, list[Batch]], s: SteeringSettings, judge: OutputJudge
) -> pd.DataFrame:
    """Return the greedy generations of the first ``n_generate`` test prompts for every setting in ``todo``."""
    gens = [g for d in todo for g in score.generations(held[d], judge, d, todo[d], s.max_new_tokens, s.n_generate)]
    frame = pd.concat(gens, ignore_index=True) if gens else pd.DataFrame(columns=GROUP)
    frame["layer"] = frame["layer"].astype("Int64")
    return frame


def with_generation_means(summary: pd.DataFrame, gens: pd.DataFrame) -> pd.DataFrame:
    """Return ``summary`` with the share of generations in the target script and equal to the expected word."""
    if not len(gens):
        return summary
    means = gens.groupby(GROUP, dropna=False).agg(
        generation_target_share=("answer_target_script", "mean"),
        generation_correct_share=("answer_correct_target", "mean"),
    )
    return summary.merge(means.reset_index(), on=GROUP, how="left")


def compute(model: Model, s: SteeringSettings) -> SteeringResult:
    """Return the steering run: Δ fitted, (layer, α) chosen on the select split, reported on test with controls."""
    torch.manual_seed(s.seed)
    clock, cpu, layers = Clock(), time.process_time(), s.layers_for(model.n_layers)
    with clock("prompts"):
        frames, splits = prompt_frames(model, s)
    log.info(
        "steering %s→%s via %s: %d fit, %d select, %d test concepts; layers %s; α %s; wrong pair %s−%s",
        s.source,
        s.target,
        s.via,
        len(splits.fit),
        len(splits.select),
        len(splits.test),
        layers,
        s.alphas,
        *s.wrong_pair,
    )
    with clock("fit"):
        vectors, wrong, fit_info = fit(model, s, frames, splits, layers)
    judge = s.judge()
    ev, name, flip_name = (
        Evaluator(planned(s, vectors), s.progress, judge),
        f"{s.source}→{s.target}",
        f"{s.target}→{s.source}",
    )

    def prompts(lang: str, towards: str, concepts: list[str], first: int = 0) -> list[Batch]:
        return core.batches(model, frames[lang].loc[concepts], frames[towards], s.batch_size, s.reuse_prefix, first)

    with clock("prefix select"):
        select = prompts(s.source, s.target, splits.select)
    with clock("grid select"):
        best = choose(ev, select, name, grid_items(vectors, [(ell, a) for ell in layers for a in s.alphas]))
    del select
    layer, alpha = int(best["layer"]), float(best["alpha"])
    with clock("prefix test"):
        test = prompts(s.source, s.target, splits.test, first=min(s.n_generate, len(splits.test)))
    with clock("controls test"):
        delta = vectors[layer]
        randoms = [delta.random_like(s.seed * 1000 + k) for k in range(s.n_random)]
        wrong_vec = rescaled(
            wrong[layer],
            delta.norm,
            {
                "method": "wrong_pair",
                "target": s.wrong_pair[0],
                "source": s.wrong_pair[1],
                "norm_of": "mean_difference",
            },
        )
        ev.run(test, name, "test", test_items(delta, alpha, randoms, wrong_vec))
    todo = {
        name: [
            Item.baseline(),
            Item.of("mean_difference", 0, delta, alpha),
            *[Item.of("random", 0, r, alpha) for r in randoms[:1]],
            Item.of("wrong_pair", 0, wrong_vec, alpha),
        ]
    }
    held = {name: test}
    if s.flip:
        with clock("flip"):
            held[flip_name], todo[flip_name] = flip(ev, prompts, s, splits, vectors, delta, flip_name)
    return report(model, s, ev, todo, held, clock, layers, splits, vectors, fit_info, cpu)


def flip(
    ev: Evaluator,
    prompts: Callable,
    s: SteeringSettings,
    splits: Splits,
    vectors: dict[int, SteeringVector],
    delta: SteeringVector,
    name: str,
) -> tuple[list[Batch], list[Item]]:
    """Return (the flip's test batches, its setting to generate with): −Δ on target-answering prompts at Δ's layer.

    Its α is chosen on the flip's select prompts, then it is evaluated on test with its own baseline and random
    directions (draws of their own: seed · 1000 + 500 + k).
    """
    flip_select = prompts(s.target, s.source, splits.flip_select)
    alpha = float(choose(ev, flip_select, name, grid_items(vectors, [(delta.layer, a) for a in s.alphas], -1))["alpha"])
    del flip_select
    test = prompts(s.target, s.source, splits.flip_test, first=min(s.n_generate, len(splits.flip_test)))
    randoms = [delta.random_like(s.seed * 1000 + 500 + k) for k in range(s.n_random)]
    ev.run(test, name, "test", test_items(-delta, alpha, randoms))
    return test, [Item.of("mean_difference", 0, -delta, alpha)]


def report(
    model: Model,
    s: SteeringSettings,
    ev: Evaluator,
    todo: dict,
    held: dict,
    clock: Clock,
    layers: list[int],
    splits: Splits,
    vectors: dict[int, SteeringVector],
    fit_info: dict,
    cpu: float,
) -> SteeringResult:
    """Return the result: rows, summary with generation shares, generations and best.json's content."""
    rows = ev.rows()
    summary = summarize(rows)
    with clock("generations"):
        gens = generation_frame(todo, held, s, ev.judge)
    summary = with_generation_means(summary, gens)
    record = settings_record(s, layers)
    result = best_json(summary, rows, record, layers, splits.to_dict(), model, s.wrong_pair[0], ev.judge)
    result.update(
        vector_norm=round(vectors[result["layer"]].norm, 6),
        fit_latents=fit_info,
        timings=clock.rounded(),
        cpu_seconds=round(time.process_time() - cpu, 3),
        torch_threads=torch.get_num_threads(),
    )
    return SteeringResult(rows, summary, gens, result, vectors, model.name)


def settings_record(s: SteeringSettings, layers: list[int]) -> dict:
    """Return the settings as best.json lists them (lists, the resolved layers, no stores)."""
    record = {k: v for k, v in s.to_dict().items() if k not in ("latents_dir", "reuse_stores", "words_dir")}
    return {**record, "layers": None if s.layers is None else layers, "reuse_prefix": s.reuse_prefix}


# ---------------------------------------------------------------- the run folder


def write(result: SteeringResult, folder: Path) -> dict:
    """Return best.json's content after writing rows.csv, summary.csv, generations.csv, heatmaps and the chosen Δ.

    Files: rows.csv (tidy, one row per direction × split × vector × draw × layer × α × prompt), summary.csv
    (its means), generations.csv, ``heatmap_<src>_to_<tgt>.png|pdf`` per direction (the select-split grid)
    and the chosen Δ as ``vector_<src>_to_<tgt>_layer<ℓ>.safetensors``.
    """
    import matplotlib.pyplot as plt

    from llmlatent.experiments.figures import plots

    result.rows.to_csv(folder / "rows.csv", index=False, float_format="%.8g")
    result.summary.to_csv(folder / "summary.csv", index=False, float_format="%.8g")
    result.generations.to_csv(folder / "generations.csv", index=False)
    for direction in result.summary["direction"].unique():
        fig = plots.steering_heatmap(result.summary, direction, result.model_name)
        plots.save(fig, folder / f"heatmap_{direction.replace('→', '_to_')}")
        plt.close(fig)
    best = result.best
    vector = result.vectors[best["layer"]]
    vector.save(folder / f"vector_{best['source']}_to_{best['target']}_layer{best['layer']}.safetensors")
    return dict(best)


HEADLINE = (
    "layer",
    "alpha",
    "n",
    "target_script_top1_share",
    "correct_target_top1_share",
    "p_target_answer",
    "p_source_answer",
    "baseline_target_script_top1_share",
    "random_control_target_script_top1_share",
    "wrong_pair_target_script_top1_share",
    "seconds",
)  # the record keys the command line prints


def describe(s: SteeringSettings) -> str:
    """Return the settings in a log line."""
    return f"{s.source}→{s.target} via {s.via}"


EXPERIMENT = Experiment(
    "steering",
    SteeringSettings,
    compute,
    write,
    command="steer",
    help="language steering: fit μ_target − μ_source, choose layer × α on a select split, report on test",
    format_version=3,
    record="best.json",
    headline=HEADLINE,
    describe=describe,
)


def sweep(model: Model, **settings: object) -> SteeringResult:
    """Return :func:`compute` of ``SteeringSettings(**settings)``."""
    return compute(model, SteeringSettings(**settings))


def _settings(kwargs: dict) -> SteeringSettings:
    if "words_dir" in kwargs:
        kwargs = {**{k: v for k, v in kwargs.items() if k != "words_dir"}, "words": kwargs["words_dir"]}
    return SteeringSettings(**kwargs)
