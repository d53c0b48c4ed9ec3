"""The language-steering demo (pipeline): fit Δ = μ_target − μ_source, choose (layer, α) on one split, report on another.

The concepts are cut into three disjoint, seeded splits: **fit** (Δ is the mean difference of their
last-token latents), **select** (the layer × α grid is evaluated here and the best setting chosen)
and **test** (only the chosen setting and its controls are evaluated here, and these are the numbers
to report). Prompts differ only in the output language (``Français: "nuage" - Русский: "`` vs
``… - 中文: "``). Controls on the test split, all at the chosen layer and α:

* ``random``: ``n_random`` seeded random directions of Δ's norm;
* ``wrong_pair``: the mean difference of another language pair, rescaled to Δ's norm (default
  μ_X − μ_source with X the first of en, de, fr, ru, zh not in {source, target, via}: it leaves the
  source language just as Δ does but heads elsewhere, so any target-language effect it has is not
  specific to Δ);
* the flip direction −Δ on target-answering prompts, with its α chosen on the select split, its own
  ``random`` control and its baseline, reported on the test split.

Settings are evaluated by :mod:`llmlatent.steering_eval`: the last prompt token only, on a KV cache of
the rest of the prompt computed once per batch, many settings per forward; greedy generations
(``max_new_tokens``) of the first ``n_generate`` test prompts continue the same caches. The numbers
and best.json come from :mod:`llmlatent.steering_report`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from llmlatent import tasks
from llmlatent.adapter import same_model
from llmlatent.data import LANGS, DataError, check_lang
from llmlatent.errors import SteeringError
from llmlatent.experiments.steering.evaluate import GROUP, Batch, Evaluator, batches, generations
from llmlatent.experiments.steering.report import best_json, pick, summarize
from llmlatent.steering import SteeringVector, check_alpha, check_count, check_layer, mean_difference

if TYPE_CHECKING:
    from llmlatent.latents import LatentStore
    from llmlatent.model import Model

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.5, 1.0, 2.0, 4.0)
DEFAULT_N_CONCEPTS = 96  # 32 fit + 32 select + 32 test concepts
MAX_ALPHA = 100.0  # α is a multiple of Δ (a difference of mean residuals); beyond this it only measures breakage


def default_layers(n_layers: int, k: int = 6) -> list[int]:
    """Return up to ``k`` layers spread over the middle and late blocks (30 % … 90 % of the depth)."""
    return sorted({int(round(x)) for x in np.linspace(0.3 * (n_layers - 1), 0.9 * (n_layers - 1), k)})


def default_wrong_pair(source: str, target: str, via: str) -> tuple[str, str]:
    """Return the wrong-pair control (X, source): X is the first language not in {source, target, via}."""
    other = next(lang for lang in LANGS if lang not in (source, target, via))
    return other, source


# ---------------------------------------------------------------- settings (validated before any model work)


def check_settings(
    *,
    source: str = "ru",
    target: str = "zh",
    via: str = "fr",
    layers: Sequence[int] | None = None,
    alphas: Sequence[float] | None = None,
    n_concepts: int | None = DEFAULT_N_CONCEPTS,
    seed: int = 0,
    max_new_tokens: int = 5,
    n_generate: int = 16,
    n_random: int = 3,
    flip: bool = True,
    n_flip: int | None = 16,
    wrong_pair: Sequence[str] | None = None,
    batch_size: int = 16,
    reuse_prefix: bool = True,
) -> dict:
    """Return the normalised settings of a sweep (alphas sorted, 0 dropped; wrong pair filled in), or raise one clear error.

    Needs no model: layers are checked against the model's depth later, by :func:`sweep`.
    """
    for lang in (source, target, via):
        check_lang(lang)
    if len({source, target, via}) < 3:
        raise DataError(f"source, target and via must be three different languages (got {source}, {target}, {via})")
    if layers is not None:
        layers = sorted({check_count(x, "layers", minimum=0) for x in layers})
        if not layers:
            raise SteeringError(
                "layers is empty; give at least one layer (after block i, 0-based) or None for the default"
            )
    raw = DEFAULT_ALPHAS if alphas is None else list(alphas)
    values = set()
    for a in raw:
        a = check_alpha(a)
        if a < 0 or a > MAX_ALPHA:
            raise SteeringError(
                f"alphas must be between 0 and {MAX_ALPHA:g} (multiples of Δ; the flip direction covers −Δ), got {a:g}"
            )
        values.add(a)
    alphas = sorted(values - {0.0})
    if not alphas:
        raise SteeringError("alphas needs at least one non-zero value (α = 0, the baseline, is always included)")
    if n_concepts is not None:
        n_concepts = check_count(n_concepts, "n_concepts", minimum=3)
    if n_flip is not None:
        n_flip = check_count(n_flip, "n_flip", minimum=1)
    if wrong_pair is None:
        wrong_pair = default_wrong_pair(source, target, via)
    wrong_pair = tuple(wrong_pair)
    if len(wrong_pair) != 2 or wrong_pair[0] == wrong_pair[1]:
        raise SteeringError(f"wrong_pair must be two different languages (towards, away from), got {wrong_pair!r}")
    for lang in wrong_pair:
        check_lang(lang)
    if via in wrong_pair:
        raise SteeringError(
            f"wrong_pair must not use the prompts' source language {via!r}: {via}→{via} is no translation"
        )
    if set(wrong_pair) == {source, target}:
        raise SteeringError(
            f"wrong_pair {wrong_pair} is Δ itself (or −Δ); pick another pair, e.g. {default_wrong_pair(source, target, via)}"
        )
    return {
        "source": source,
        "target": target,
        "via": via,
        "layers": layers,
        "alphas": alphas,
        "n_concepts": n_concepts,
        "seed": check_count(seed, "seed"),
        "max_new_tokens": check_count(max_new_tokens, "max_new_tokens", minimum=1),
        "n_generate": check_count(n_generate, "n_generate"),
        "n_random": check_count(n_random, "n_random"),
        "flip": bool(flip),
        "n_flip": n_flip,
        "wrong_pair": list(wrong_pair),
        "batch_size": check_count(batch_size, "batch_size", minimum=1),
        "reuse_prefix": bool(reuse_prefix),
    }


# ---------------------------------------------------------------- splits


@dataclass(frozen=True)
class Splits:
    """Three disjoint, sorted concept lists (fit, select, test) and the flip direction's subsets of select and test."""

    fit: list[str]
    select: list[str]
    test: list[str]
    flip_select: list[str]
    flip_test: list[str]

    def to_dict(self) -> dict[str, list[str]]:
        """Return the splits as a JSON-able dict (recorded in best.json)."""
        return {
            "fit": self.fit,
            "select": self.select,
            "test": self.test,
            "flip_select": self.flip_select,
            "flip_test": self.flip_test,
        }


def split_concepts(concepts: Sequence[str], seed: int, n: int | None = None) -> tuple[list[str], list[str], list[str]]:
    """Return (fit, select, test) concept lists: a seeded shuffle of (up to ``n`` of) ``concepts`` cut in thirds.

    fit and select get ⌊m/3⌋ concepts each and test the rest (m = the number used).
    """
    pool = sorted(set(concepts))
    if len(pool) < 3:
        raise DataError(f"steering needs at least 3 concepts to split into fit, select and test, got {len(pool)}")
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen = [pool[i] for i in order[: min(n or len(pool), len(pool))]]
    third = len(chosen) // 3
    return sorted(chosen[:third]), sorted(chosen[third : 2 * third]), sorted(chosen[2 * third :])


def choose_subset(concepts: Sequence[str], seed: int, n: int | None) -> list[str]:
    """Return a seeded subset of ``n`` concepts (all when ``n`` is None or larger), sorted."""
    return sorted(np.random.default_rng(seed).permutation(list(concepts))[: n or len(concepts)].tolist())


def make_splits(concepts: Sequence[str], seed: int, n: int | None, n_flip: int | None) -> Splits:
    """Return the fit / select / test splits and the flip subsets (seed + 1, seed + 2) of a concept pool."""
    fit, select, test = split_concepts(concepts, seed, n)
    return Splits(fit, select, test, choose_subset(select, seed + 1, n_flip), choose_subset(test, seed + 2, n_flip))


# ---------------------------------------------------------------- fit


def _digest(texts: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]


def _store_with(stores: Sequence[LatentStore], model: Model, frame: pd.DataFrame) -> LatentStore | None:
    """Return the first store that holds, for this model, exactly ``frame``'s prompt for each of its concepts."""
    for store in stores:
        if not same_model(store.fingerprint, model.fingerprint()) or "concept" not in store.prompts:
            continue
        held = store.prompts.drop_duplicates("concept", keep=False).set_index("concept")["prompt"]
        if all(held.get(c) == p for c, p in zip(frame["concept"], frame["prompt"])):
            return store
    return None


def fit_stores(
    model: Model,
    frames: dict[str, pd.DataFrame],
    fit: list[str],
    store_dir: Path,
    *,
    reuse_stores: Sequence[LatentStore] = (),
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[dict[str, LatentStore], dict[str, dict]]:
    """Return (language → latent store holding the fit prompts, language → where they came from).

    A store in ``reuse_stores`` is used when it holds the very same prompt for every fit concept (no
    forward pass); otherwise the fit prompts are collected (float32) into ``store_dir``, in a folder
    named by their digest, so a later run with the same prompts resumes it instead of recomputing.
    """
    from llmlatent import latents

    out, info = {}, {}
    for lang, frame in frames.items():
        part = frame.loc[fit].reset_index(drop=True)
        found = _store_with(reuse_stores, model, part)
        if found is not None:
            out[lang], info[lang] = found, {"reused": True, "store": Path(found.path).name, "dtype": found.dtype}
            log.info("fit latents %s: reused from %s", lang, found.path)
            continue
        folder = store_dir / f"{part['src'].iloc[0]}-{lang}-{_digest(part['prompt'].tolist())}"
        meta = {"task": "translation", "src": part["src"].iloc[0], "tgt": lang}
        resumed = (folder / "store.json").exists()  # kept by an earlier run: collect only verifies its shards
        out[lang] = latents.collect(
            model, tasks.PromptSet(part, meta=meta), folder, batch_size=batch_size, dtype="float32", progress=progress
        )
        info[lang] = {"reused": False, "resumed": resumed, "store": folder.name, "dtype": "float32"}
    return out, info


def rescaled(vector: SteeringVector, norm: float, meta: dict) -> SteeringVector:
    """Return ``vector``'s direction with Euclidean norm ``norm`` (a control of the same norm class)."""
    return SteeringVector(vector.layer, vector.vector / vector.vector.norm() * norm, {**vector.meta, **meta})


@dataclass
class SweepResult:
    """What :func:`sweep` measured: tidy per-prompt ``rows``, their ``summary``, ``generations``, ``best``, ``vectors``."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    generations: pd.DataFrame
    best: dict
    vectors: dict[int, SteeringVector]


def grid(
    ev: Evaluator,
    batches: list[Batch],
    direction: str,
    vectors: dict[int, SteeringVector],
    pairs: list[tuple[int, float]],
    sign: int = 1,
) -> pd.Series:
    """Return the best setting on the select split after evaluating the baseline and every (layer, α) in ``pairs``."""
    ev.run(
        batches,
        direction,
        "select",
        [("mean_difference", 0, None, 0.0, None)]
        + [("mean_difference", 0, ell, a, vectors[ell] if sign > 0 else -vectors[ell]) for ell, a in pairs],
    )
    return pick(summarize(pd.concat(ev.parts, ignore_index=True)), direction)


def controls(
    ev: Evaluator,
    batches: list[Batch],
    direction: str,
    vector: SteeringVector,
    alpha: float,
    randoms: list[SteeringVector],
    wrong: SteeringVector | None = None,
) -> None:
    """Evaluate on the test split: the baseline, ``alpha · vector``, each random control and the wrong-pair control."""
    items = [("mean_difference", 0, None, 0.0, None), ("mean_difference", 0, vector.layer, alpha, vector)]
    items += [("random", k, vector.layer, alpha, r) for k, r in enumerate(randoms)]
    if wrong is not None:
        items.append(("wrong_pair", 0, vector.layer, alpha, wrong))
    ev.run(batches, direction, "test", items)


def sweep(
    model: Model,
    *,
    source: str = "ru",
    target: str = "zh",
    via: str = "fr",
    layers: Sequence[int] | None = None,
    alphas: Sequence[float] | None = None,
    n_concepts: int | None = DEFAULT_N_CONCEPTS,
    seed: int = 0,
    max_new_tokens: int = 5,
    n_generate: int = 16,
    n_random: int = 3,
    flip: bool = True,
    n_flip: int | None = 16,
    wrong_pair: Sequence[str] | None = None,
    store_dir: str | Path | None = None,
    reuse_stores: Sequence[LatentStore] = (),
    words_dir: str | Path | None = None,
    batch_size: int = 16,
    reuse_prefix: bool = True,
    progress: bool = True,
) -> SweepResult:
    """Return the steering sweep: Δ = μ_target − μ_source fitted, (layer, α) chosen on the select split, reported on test.

    ``source``-answering prompts (``via`` is the prompts' source language) are steered with α·Δ at
    each layer on the select split (α = 0 is the baseline); the best setting (most target-script top-1,
    then p(correct answer)) is then evaluated on the test split with its controls (module docstring).
    Per setting: p(correct ``target`` answer), p(correct ``source`` answer), the share of top-1 tokens in
    the target script, in CJK, and equal to a token of the correct target word. Greedy generations
    (``max_new_tokens``) of the first ``n_generate`` test prompts at the baseline, the chosen setting,
    the first random control, the wrong pair and the flip's choice. ``store_dir`` keeps the fit latent
    stores (else a temporary folder); ``reuse_stores`` are latent stores searched for the fit prompts
    first. Same seed, same numbers.
    """
    s = check_settings(
        source=source,
        target=target,
        via=via,
        layers=layers,
        alphas=alphas,
        n_concepts=n_concepts,
        seed=seed,
        max_new_tokens=max_new_tokens,
        n_generate=n_generate,
        n_random=n_random,
        flip=flip,
        n_flip=n_flip,
        wrong_pair=wrong_pair,
        batch_size=batch_size,
        reuse_prefix=reuse_prefix,
    )
    layers = (
        default_layers(model.n_layers) if s["layers"] is None else [check_layer(x, model.n_layers) for x in s["layers"]]
    )
    alphas, seed, wrong_to, wrong_from = s["alphas"], s["seed"], *s["wrong_pair"]
    torch.manual_seed(seed)
    clock, cpu, timings = time.perf_counter(), time.process_time(), {}
    langs = list(dict.fromkeys([source, target, wrong_to, wrong_from]))
    frames = {
        lang: tasks.build("translation", via, lang, model.tokenizer, seed=seed, words_dir=words_dir).df.set_index(
            "concept", drop=False
        )
        for lang in langs
    }
    pool = sorted(set.intersection(*(set(f.index) for f in frames.values())))
    splits = make_splits(pool, seed, s["n_concepts"], s["n_flip"])
    timings["prompts"] = time.perf_counter() - clock
    log.info(
        "steering %s→%s via %s: %d fit, %d select, %d test concepts; layers %s; α %s; wrong pair %s−%s",
        source,
        target,
        via,
        len(splits.fit),
        len(splits.select),
        len(splits.test),
        layers,
        alphas,
        wrong_to,
        wrong_from,
    )

    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmlatent-steer-") as tmp:
        stores, fit_info = fit_stores(
            model,
            frames,
            splits.fit,
            Path(store_dir or tmp),
            reuse_stores=reuse_stores,
            batch_size=s["batch_size"],
            progress=progress,
        )
        vectors = {ell: mean_difference(stores[target], stores[source], ell, concepts=splits.fit) for ell in layers}
        wrong = {ell: mean_difference(stores[wrong_to], stores[wrong_from], ell, concepts=splits.fit) for ell in layers}
    for vec in (*vectors.values(), *wrong.values()):
        vec.meta.update(fit_concepts=splits.fit, seed=seed)
    timings["fit"] = time.perf_counter() - clock

    name, flip_name = f"{source}→{target}", f"{target}→{source}"
    total = (
        1 + len(layers) * len(alphas) + 3 + s["n_random"] + (1 + len(alphas) + 2 + s["n_random"] if s["flip"] else 0)
    )
    ev = Evaluator(total, progress)

    def prompts(lang: str, towards: str, concepts: list[str], first: int = 0) -> list[Batch]:
        return batches(model, frames[lang].loc[concepts], frames[towards], s["batch_size"], s["reuse_prefix"], first)

    clock = time.perf_counter()
    select = prompts(source, target, splits.select)
    timings["prefix select"] = time.perf_counter() - clock
    clock = time.perf_counter()
    best = grid(ev, select, name, vectors, [(ell, a) for ell in layers for a in alphas])
    del select
    layer, alpha = int(best["layer"]), float(best["alpha"])
    timings["grid select"] = time.perf_counter() - clock

    clock = time.perf_counter()
    test = prompts(source, target, splits.test, first=min(s["n_generate"], len(splits.test)))
    timings["prefix test"] = time.perf_counter() - clock
    clock = time.perf_counter()
    delta = vectors[layer]
    randoms = [delta.random_like(seed * 1000 + k) for k in range(s["n_random"])]
    wrong_vec = rescaled(
        wrong[layer],
        delta.norm,
        {"method": "wrong_pair", "target": wrong_to, "source": wrong_from, "norm_of": "mean_difference"},
    )
    controls(ev, test, name, delta, alpha, randoms, wrong_vec)
    timings["controls test"] = time.perf_counter() - clock

    todo = {
        name: [("mean_difference", 0, pd.NA, 0.0, None), ("mean_difference", 0, layer, alpha, delta)]
        + [("random", 0, layer, alpha, randoms[0])] * bool(randoms)
        + [("wrong_pair", 0, layer, alpha, wrong_vec)]
    }
    held = {name: test}
    if s["flip"]:
        clock = time.perf_counter()
        flip_select = prompts(target, source, splits.flip_select)
        flip_best = grid(ev, flip_select, flip_name, vectors, [(layer, a) for a in alphas], sign=-1)
        del flip_select
        flip_alpha = float(flip_best["alpha"])
        flip_test = prompts(target, source, splits.flip_test, first=min(s["n_generate"], len(splits.flip_test)))
        flip_randoms = [delta.random_like(seed * 1000 + 500 + k) for k in range(s["n_random"])]  # own draws
        controls(ev, flip_test, flip_name, -delta, flip_alpha, flip_randoms)
        todo[flip_name] = [("mean_difference", 0, layer, flip_alpha, -delta)]
        held[flip_name] = flip_test
        timings["flip"] = time.perf_counter() - clock

    rows = ev.rows()
    summary = summarize(rows)
    clock = time.perf_counter()
    gens = [g for d in todo for g in generations(held[d], d, todo[d], s["max_new_tokens"], s["n_generate"])]
    gen_frame = pd.concat(gens, ignore_index=True) if gens else pd.DataFrame(columns=GROUP)
    gen_frame["layer"] = gen_frame["layer"].astype("Int64")
    timings["generations"] = time.perf_counter() - clock
    if len(gen_frame):
        means = (
            gen_frame.groupby(GROUP, dropna=False)
            .agg(
                generation_target_share=("answer_target_script", "mean"),
                generation_correct_share=("answer_correct_target", "mean"),
            )
            .reset_index()
        )
        summary = summary.merge(means, on=GROUP, how="left")
    result = best_json(summary, rows, s, layers, splits.to_dict(), model, wrong_to)
    result["vector_norm"] = round(vectors[result["layer"]].norm, 6)
    result["fit_latents"] = fit_info
    result["timings"] = {k: round(v, 3) for k, v in timings.items()}
    result["cpu_seconds"] = round(time.process_time() - cpu, 3)
    result["torch_threads"] = torch.get_num_threads()
    return SweepResult(rows, summary, gen_frame, result, vectors)


# ---------------------------------------------------------------- the run folder


def cache_settings(
    model: Model, settings: dict, words_dir: str | Path | None, reuse_stores: Sequence[LatentStore]
) -> dict:
    """Return every setting that changes a sweep's result, for :func:`llmlatent.runs.cache_key`."""
    from llmlatent.experiments.runs import words_digest

    s = dict(settings)
    if s["layers"] is None:
        s["layers"] = default_layers(model.n_layers)
    s["words"] = words_digest(words_dir)
    s["reuse_stores"] = [{"prompts_sha256": st.config["prompts_sha256"], "dtype": st.dtype} for st in reuse_stores]
    return s


def run_to_dir(
    model: Model,
    out: str | Path,
    *,
    force: bool = False,
    store_dir: str | Path | None = None,
    reuse_stores: Sequence[LatentStore] = (),
    words_dir: str | Path | None = None,
    progress: bool = True,
    **kwargs: object,
) -> dict:
    """Return best.json's content after writing the sweep to ``out`` atomically, or the cached one if nothing changed.

    The folder is reused when its best.json holds the same cache key (model identity + every setting,
    see :func:`cache_settings`); ``force`` recomputes. Files: rows.csv (tidy, one row per direction ×
    split × vector × draw × layer × α × prompt), summary.csv (its means), generations.csv,
    ``heatmap_<src>_to_<tgt>.png|pdf`` per direction (the select-split grid), the chosen Δ as
    ``vector_<src>_to_<tgt>_layer<ℓ>.safetensors`` and best.json; ``seconds`` excludes model loading.
    """
    import matplotlib.pyplot as plt

    from llmlatent.atomic import check_output_dir
    from llmlatent.experiments import plots, runs

    settings = check_settings(**kwargs)
    check_output_dir(out, "best.json")
    key = runs.cache_key("steering", model.fingerprint(), cache_settings(model, settings, words_dir, reuse_stores))
    if not force and (cached := runs.cached(out, key, "best.json")) is not None:
        log.info("steering %s: cached (same model and settings)", out)
        return cached
    started = time.perf_counter()
    result = sweep(
        model, **settings, store_dir=store_dir, reuse_stores=reuse_stores, words_dir=words_dir, progress=progress
    )
    with runs.write_run(out, key, record="best.json") as (tmp, record):
        result.rows.to_csv(tmp / "rows.csv", index=False, float_format="%.8g")
        result.summary.to_csv(tmp / "summary.csv", index=False, float_format="%.8g")
        result.generations.to_csv(tmp / "generations.csv", index=False)
        for direction in result.summary["direction"].unique():
            fig = plots.steering_heatmap(result.summary, direction, model.name)
            plots.save(fig, tmp / f"heatmap_{direction.replace('→', '_to_')}")
            plt.close(fig)
        best = result.best
        vector = result.vectors[best["layer"]]
        vector.save(tmp / f"vector_{best['source']}_to_{best['target']}_layer{best['layer']}.safetensors")
        best["seconds"] = round(time.perf_counter() - started, 3)
        record.update(best)
    log.info("wrote %s in %.1f s", out, best["seconds"])
    return json.loads(json.dumps(record, default=str))  # the same structure a cached call returns
