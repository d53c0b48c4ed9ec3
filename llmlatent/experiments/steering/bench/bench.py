"""The steering benchmark: every ordered pair of ``--langs``, four vector methods, (layer, α) held out.

:func:`compute` reads top to bottom:

1. prompts and splits (:mod:`..core`, the loop the demo runs too): translation prompts answering in every
   language from each input language it needs; the concept pool is cut into three disjoint seeded thirds
   **fit / select / test** (:func:`llmlatent.experiments.steering.core.split_concepts`);
2. language means: for each language L the fit prompts' last-token latents (from ``n_vias`` input
   languages) are collected **once** into latent stores under ``latents_dir`` (a rerun, or ``reproduce``,
   reuses them and runs no forward; ``fit_forwards`` in summary.json counts them) and averaged
   (:mod:`llmlatent.steering.language_means`);
3. per ordered pair s → t: each method's direction at each layer, scaled to the layer's common norm
   (the mean ‖μ_t − μ_s‖ over all pairs), so α means the same for every method and pair; the grid
   methods × layers × α runs on the select prompts (one prefix cache per batch, all settings tiled,
   scored by :class:`..score.Greedy`: the output language is the judge's language verdict);
   :func:`.report.choose` picks each method's (layer, α) from the select rows alone; the test prompts
   then get α = 0, each chosen setting and, at each chosen (layer, α), the controls: ``n_random``
   random directions of the common norm and the wrong pair μ_X − μ_s (X the first other language);
4. the report (:mod:`.report`): the tidy table with 95 % bootstrap intervals, the best method per pair.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd
import torch
from tqdm.auto import tqdm

from llmlatent.adapter import Fingerprint
from llmlatent.embedded import cache_dir
from llmlatent.experiments.base import Clock, Experiment
from llmlatent.experiments.steering import core
from llmlatent.experiments.steering.bench.plan import SteerBenchSettings
from llmlatent.experiments.steering.bench.report import best_per_pair, choose, record, summarize, tidy_table
from llmlatent.experiments.steering.core import Item, evaluate
from llmlatent.experiments.steering.fit import fit_stores
from llmlatent.experiments.steering.score import Greedy
from llmlatent.languages.scripts import OutputJudge
from llmlatent.steering import language_means as language_vectors
from llmlatent.steering.vector import SteeringVector

if TYPE_CHECKING:
    from collections.abc import Mapping

    from llmlatent.model import Model
    from llmlatent.steering.language_means import LanguageMeans

log = logging.getLogger(__name__)


@dataclass
class BenchResult:
    """What :func:`compute` measured: tidy ``rows``, their ``summary``, ``chosen`` settings, ``table``, ``best``."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    chosen: pd.DataFrame
    table: pd.DataFrame
    best: pd.DataFrame
    record: dict
    model_name: str = ""


def prompt_frames(model: Model, s: SteerBenchSettings) -> tuple[dict[tuple[str, str], pd.DataFrame], dict]:
    """Return (via, lang) → translation prompts by concept, for the fit and the steered pairs, and the splits."""
    wanted = {(v, lang) for lang in s.langs for v in s.vias(lang)}
    wanted |= {(s.via(a, b), x) for a, b in s.pairs() for x in (a, b)}
    frames = core.prompt_frames(model.tokenizer, sorted(wanted), s.seed, s.words_dir)
    pool = core.concept_pool(cast("Mapping[object, Any]", frames))  # the Mapping's key type is invariant
    fit, select, test = core.split_concepts(pool, s.seed, s.n_concepts)
    return frames, {"fit": fit, "select": select, "test": test}


def store_root(model: Model, s: SteerBenchSettings) -> Path:
    """Return the folder of the fit latent stores: ``latents_dir`` or the cache's, one subfolder per model and dtype."""
    fp = Fingerprint.of(model.fingerprint())
    dtype = str(getattr(model.hf, "dtype", "")).removeprefix("torch.")
    root = Path(s.latents_dir) if s.latents_dir else cache_dir() / "steerbench-latents"
    return root / f"{fp.unembedding_sha256[:12]}-{fp.n_layers}x{fp.hidden_size}-{dtype}"


def fit_means(
    model: Model, s: SteerBenchSettings, frames: dict, fit: list[str], layers: list[int]
) -> tuple[LanguageMeans, dict]:
    """Return the language means of the fit concepts and where their latents came from (forwards run: 0 on reuse)."""
    forwards = [0]
    handle = model.hf.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    stores: dict[str, list] = {lang: [] for lang in s.langs}
    info = {}
    try:
        for v in dict.fromkeys(v for lang in s.langs for v in s.vias(lang)):
            langs = [lang for lang in s.langs if v in s.vias(lang)]
            found, where = fit_stores(
                model,
                {lang: frames[(v, lang)] for lang in langs},
                fit,
                store_root(model, s),
                batch_size=s.batch_size,
                progress=s.progress,
            )
            for lang in langs:
                stores[lang].append(found[lang])
                info[f"{v}->{lang}"] = where[lang]
    finally:
        handle.remove()
    means = language_vectors.from_stores(stores, layers, fit)
    return means, {"stores": info, "fit_forwards": forwards[0]}


def pair_vectors(
    means: LanguageMeans, s: SteerBenchSettings, pair: tuple[str, str], norms: dict[int, float]
) -> dict[tuple[str, int], SteeringVector]:
    """Return (method, layer) → the method's vector for ``pair`` at the layer's common norm (undefined: left out)."""
    source, target = pair
    out = {}
    for method in s.methods:
        for ell in means.layers:
            raw = language_vectors.direction(means, method, source, target, ell)
            if raw is not None:
                meta = {"method": method, "source": source, "target": target, "norm": norms[ell], "seed": s.seed}
                out[(method, ell)] = SteeringVector(ell, language_vectors.equal_norm(raw, norms[ell]), meta)
    return out


def control_items(
    means: LanguageMeans, s: SteerBenchSettings, pair: tuple[str, str], chosen: pd.DataFrame, norms: dict
) -> list[Item]:
    """Return the test split's controls at each distinct chosen (layer, α): random directions, the wrong pair."""
    source, target = pair
    wrong_to, items = s.wrong(source, target), []
    for ell, alpha in sorted({(int(a), float(b)) for a, b in zip(chosen["layer"], chosen["alpha"])}):
        randoms = []
        for k in range(s.n_random):
            gen = torch.Generator().manual_seed(s.seed * 1000 + 100 * ell + k)  # the same draws for every pair
            draw = torch.randn(means.z[source].shape[-1], generator=gen, dtype=torch.float64)
            randoms.append(SteeringVector(ell, language_vectors.equal_norm(draw, norms[ell]), {"method": "random"}))
        wrong = None
        if wrong_to is not None:
            # mean_diff is defined for every pair of languages (direction returns None only for english_fit)
            raw = cast(torch.Tensor, language_vectors.direction(means, "mean_diff", source, wrong_to, ell))
            wrong = SteeringVector(ell, language_vectors.equal_norm(raw, norms[ell]), {"method": "wrong_pair"})
        items += core.controls(alpha, randoms, wrong)
    return items


def run_pair(
    model: Model, s: SteerBenchSettings, pair: tuple[str, str], ctx: dict
) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """Return (the pair's tidy rows on select and test, its chosen settings): the grid on select, choice, test."""
    source, target = pair
    frames, splits, means, norms, judge = (ctx[k] for k in ("frames", "splits", "means", "norms", "judge"))
    via = s.via(source, target)
    vectors = pair_vectors(means, s, pair, norms)
    scorer = Greedy(judge, source, target, s.max_new_tokens)

    def prompts(split: str) -> list[core.Batch]:
        return core.batches(model, frames[(via, source)].loc[splits[split]], frames[(via, target)], s.batch_size)

    grid = [Item.baseline("baseline")] + [Item.of(m, 0, v, a) for (m, _), v in vectors.items() for a in s.alphas]
    select_rows = evaluate(prompts("select"), grid, "select", scorer)
    chosen = choose(summarize(select_rows))  # the select rows alone: test prompts do not exist yet
    steered = [Item.of(r.method, 0, vectors[(r.method, int(r.layer))], float(r.alpha)) for r in chosen.itertuples()]
    todo = [Item.baseline("baseline"), *steered, *control_items(means, s, pair, chosen, norms)]
    test_rows = evaluate(prompts("test"), todo, "test", scorer)
    return [select_rows, test_rows], chosen.assign(via=via)


def compute(model: Model, s: SteerBenchSettings) -> BenchResult:
    """Return the benchmark: means fitted once, each pair × method's (layer, α) chosen on select, reported on test."""
    torch.manual_seed(s.seed)
    clock, cpu, layers = Clock(), time.process_time(), s.layers_for(model.n_layers)
    with clock("prompts"):
        frames, splits = prompt_frames(model, s)
    log.info(
        "steer-bench %s: %d pairs, methods %s, layers %s, α %s; %d fit, %d select, %d test concepts",
        ",".join(s.langs),
        len(s.pairs()),
        ",".join(s.methods),
        layers,
        s.alphas,
        *(len(splits[k]) for k in ("fit", "select", "test")),
    )
    with clock("fit"):
        means, fit_info = fit_means(model, s, frames, splits["fit"], layers)
    log.info("fit latents: %d forwards (0 = every store reused)", fit_info["fit_forwards"])
    norms = language_vectors.layer_norms(means, s.langs)
    ctx = {
        "frames": frames,
        "splits": splits,
        "means": means,
        "norms": norms,
        "judge": OutputJudge(s.langs, s.words_dir),
    }
    parts, chosen = [], []
    with clock("pairs"):
        for pair in tqdm(s.pairs(), desc="steer-bench", unit="pair", disable=not s.progress):
            rows, picked = run_pair(model, s, pair, ctx)
            parts += rows
            chosen.append(picked)
    rows = pd.concat(parts, ignore_index=True)
    summary, chosen_frame = summarize(rows), pd.concat(chosen, ignore_index=True)
    with clock("report"):
        table = tidy_table(rows, chosen_frame, s.seed)
        best = best_per_pair(table)
    extra = {"fit_latents": fit_info, "norms": {str(k): round(v, 6) for k, v in norms.items()}, "splits": splits}
    rec = record(s, model, layers, chosen_frame, best, table, extra)
    rec.update(timings=clock.rounded(), cpu_seconds=round(time.process_time() - cpu, 3))
    rec["torch_threads"] = torch.get_num_threads()
    return BenchResult(rows, summary, chosen_frame, table, best, rec, model.name)


def write(result: BenchResult, folder: Path) -> dict:
    """Return summary.json's content after writing rows.csv, summary.csv, chosen.csv, table.csv, best.csv, figures.

    Figures: ``heatmaps.png|pdf``, the source × target test score of each method and the best method's
    chosen layer per pair (:func:`llmlatent.experiments.figures.steerbench.benchmark_heatmaps`).
    """
    import matplotlib.pyplot as plt

    from llmlatent.experiments.figures import plots
    from llmlatent.experiments.figures import steerbench as steerbench_plots

    result.rows.to_csv(folder / "rows.csv", index=False, float_format="%.8g")
    result.summary.to_csv(folder / "summary.csv", index=False, float_format="%.8g")
    result.chosen.to_csv(folder / "chosen.csv", index=False, float_format="%.8g")
    result.table.to_csv(folder / "table.csv", index=False, float_format="%.8g")
    result.best.to_csv(folder / "best.csv", index=False, float_format="%.8g")
    fig = steerbench_plots.benchmark_heatmaps(result.table, result.best, result.record["langs"], result.model_name)
    plots.save(fig, folder / "heatmaps")
    plt.close(fig)
    return dict(result.record)


HEADLINE = ("langs", "pairs", "wins", "mean_test_score", "fit_latents", "seconds")


def describe(s: SteerBenchSettings) -> str:
    """Return the settings in a log line."""
    return f"steer-bench {','.join(s.langs)}"


EXPERIMENT = Experiment(
    "steerbench",
    SteerBenchSettings,
    compute,
    write,
    command="steer-bench",
    help="steering benchmark: every ordered pair of --langs, four vector methods, (layer, α) held out",
    format_version=1,
    record="summary.json",
    headline=HEADLINE,
    describe=describe,
)


def read_results(out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (table, best) of a run folder: the tidy table with intervals and the best method per pair."""
    out = Path(out)
    return pd.read_csv(out / "table.csv"), pd.read_csv(out / "best.csv")
