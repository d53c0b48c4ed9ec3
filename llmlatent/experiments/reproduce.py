"""``make reproduce``: every experiment of the paper on one model, results under results/, figures under figures/.

Each step's output folder is reused only when its stored cache key (:mod:`llmlatent.runs`: model
identity, every setting that shapes the result, format version) equals the key of the run asked for;
``force=True`` recomputes everything.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd

from llmlatent import lens, tasks
from llmlatent.adapter import same_model
from llmlatent.data import LANGS
from llmlatent.experiments import plots, runs
from llmlatent.experiments import sweep as experiment

if TYPE_CHECKING:
    from llmlatent.latents import LatentStore
    from llmlatent.model import Model

log = logging.getLogger(__name__)

HAND_PROMPT = 'Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "'
FEATURED = {  # run folder -> figure name in figures/
    "translation/fr-zh": "translation_fr_zh",
    "repetition/zh-zh": "repetition_zh",
    "cloze/fr-fr": "cloze_fr",
}


def run_specs() -> list[tuple[str, str, str]]:
    """Return every (task, src, tgt) the paper's figures need: 20 translation pairs, 5 repetition, 5 cloze."""
    specs = [("translation", s, t) for s, t in tasks.all_pairs()]
    specs += [("repetition", lang, lang) for lang in LANGS]
    specs += [("cloze", lang, lang) for lang in LANGS]
    return specs


def load_summaries(results: Path, task: str) -> dict[tuple[str, str], pd.DataFrame]:
    """Return {(src, tgt): summary} of every finished run of ``task`` under ``results``.

    The pair is read from each folder's run.json (not its name, so a user's ``fr-zh-strict`` folder is
    fine); when several folders hold one pair, the one named ``src-tgt`` wins, else the first by name.
    """
    out: dict[tuple[str, str], pd.DataFrame] = {}
    for path in sorted((results / task).glob("*/summary.csv")):
        try:
            run = json.loads((path.parent / "run.json").read_text(encoding="utf-8"))
            pair = (str(run["src"]), str(run["tgt"]))
        except (OSError, ValueError, KeyError, TypeError):
            log.info("%s: no readable run.json with src/tgt, skipped", path.parent)
            continue
        if pair in out and path.parent.name != f"{pair[0]}-{pair[1]}":
            log.info("%s: another folder already holds %s→%s, skipped", path.parent, *pair)
            continue
        out[pair] = pd.read_csv(path)
    return out


def pivot_table(results: Path) -> pd.DataFrame:
    """Return the English-pivot summary of every run: peak p_english (layer, value), p_source there, final p_target."""
    rows = []
    for path in sorted(results.glob("*/*/run.json")):
        run = json.loads(path.read_text())
        if not all(k in run for k in ("task", "src", "tgt", "peak_english", "final_target")):
            continue  # not a sweep's run.json (another kind of result)
        rows.append(
            {
                "task": run["task"],
                "src": run["src"],
                "tgt": run["tgt"],
                "n_prompts": run["n_prompts"],
                "peak_english_layer": run["peak_english"]["layer"],
                "peak_english": run["peak_english"]["value"],
                "p_source_at_peak": run["p_source_at_peak"],
                "final_target": run["final_target"]["value"],
                "final_english": run["final_english"],
            }
        )
    return pd.DataFrame(rows)


def grid_figures(results: Path, figures: Path, model_name: str) -> list[Path]:
    """Return the paths of the pair-grid figures (translation grid, repetition and cloze rows) re-rendered from results."""
    written = []
    translation = load_summaries(results, "translation")
    if translation:
        fig = plots.pair_grid(translation, list(LANGS), title=f"translation, all pairs · {model_name}")
        written += plots.save(fig, figures / "grid_translation")
        plt.close(fig)
    for task in ("repetition", "cloze"):
        summaries = load_summaries(results, task)
        if not summaries:
            continue
        fig = plots.task_row(summaries, task)
        written += plots.save(fig, figures / f"grid_{task}")
        plt.close(fig)
    return written


def latent_step(m: Model, path: Path, *, n: int | None, seed: int, batch_size: int, force: bool) -> LatentStore:
    """Return the fr→zh latent store at ``path``, collecting it unless an identical one is already there."""
    from llmlatent import latents

    prompts = tasks.build("translation", "fr", "zh", m.tokenizer, n=n, seed=seed)
    if path.exists() and not force:
        try:
            store = latents.load(path)
            if same_model(store.fingerprint, m.fingerprint()) and store.prompts["prompt"].tolist() == prompts.prompts:
                log.info("latents %s: cached", path)
                return store
        except (ValueError, OSError) as exc:
            log.info("latents %s: recollecting (%s)", path, exc)
    if path.exists():
        latents.check_store_dir(path, repair=True)  # never delete a folder that is not a latent store
        shutil.rmtree(path)
    log.info("collecting latents for %d fr→zh prompts into %s", len(prompts), path)
    return latents.collect(m, prompts, path, batch_size=batch_size)


def steering_step(
    m: Model,
    out: Path,
    figures: Path,
    *,
    n: int | None = None,
    seed: int = 0,
    force: bool = False,
    reuse_stores: list | tuple = (),
) -> dict:
    """Return best.json of the RU→ZH steering demo, and copy its heatmaps to ``figures``.

    The folder is reused only when its cache key (model identity and every setting: seed, n, layers,
    alphas, …) matches; ``n`` (prompts per run) becomes the number of concepts cut into fit / select /
    test (default: the demo's own). ``reuse_stores`` (e.g. the fr→zh latent store) supply fit latents
    without new forwards when they hold the same prompts.
    """
    from llmlatent.experiments.steering import demo as steering_sweep

    log.info("steering demo ru→zh (via fr) into %s", out)
    n_concepts = steering_sweep.DEFAULT_N_CONCEPTS if n is None else n
    best = steering_sweep.run_to_dir(
        m,
        out,
        source="ru",
        target="zh",
        via="fr",
        seed=seed,
        n_concepts=n_concepts,
        force=force,
        reuse_stores=reuse_stores,
    )
    for path in out.glob("heatmap_*.*"):
        shutil.copyfile(path, figures / f"steering_{path.name.removeprefix('heatmap_')}")
    return best


PATCH_PAIRS = 32  # donor/receiver pairs of make reproduce's patching step (about 2 minutes on 2 idle cores)


def patching_step(m: Model, out: Path, figures: Path, *, n: int | None, seed: int, force: bool) -> dict:
    """Return run.json of both patching experiments (de→fr into ru→zh; mean over de, fr, ru, en), copying the figures.

    ``out`` sits directly under results/ (not results/<task>/<pair>/, which pivot_table reads as lens sweeps).
    """
    from llmlatent.experiments import patching as patch_experiment

    record = patch_experiment.run_to_dir(
        m,
        out,
        force=force,
        donor=("de", "fr"),
        receiver=("ru", "zh"),
        mean_over=("de", "fr", "ru", "en"),
        n=n or PATCH_PAIRS,
        seed=seed,
        batch_size=32,
    )
    for path in out.glob("*.p[nd][gf]"):
        shutil.copyfile(path, figures / f"patching_{path.name}")
    return record


def run_all(
    model_name: str | None = None,
    *,
    results: str | Path = "results",
    figures: str | Path = "figures",
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    force: bool = False,
    only: str | None = None,
    load_kwargs: dict | None = None,
) -> dict:
    """Return a summary of the full reproduction after running (or reusing) every step and writing all figures.

    ``load_kwargs`` are passed to :func:`llmlatent.model.load` (dtype, device, device_map, trust_remote_code),
    so a large model's reproduction goes through here as well.
    """
    from llmlatent import model as model_mod

    started = time.perf_counter()
    results, figures = Path(results), Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    m = model_mod.load(model_name, **(load_kwargs or {}))
    log.info("model %s loaded in %.1f s", m.name, time.perf_counter() - started)

    table = lens.top_tokens(m, HAND_PROMPT, k=5)
    results.mkdir(parents=True, exist_ok=True)
    table.to_csv(results / "hand_prompt_top_tokens.csv", index=False)
    fig = plots.top_token_heatmap(table, title="logit lens, hand prompt (fr→zh, query 'nuage')")
    plots.save(fig, figures / "hand_prompt_lens")
    plt.close(fig)

    specs = [s for s in run_specs() if only is None or s[0] == only]
    for i, (task, src, tgt) in enumerate(specs, 1):
        folder = results / task / f"{src}-{tgt}"
        prompts = tasks.build(
            task, src, tgt, m.tokenizer, n=n, seed=seed
        )  # cheap (tokenizer only); its digest is in the key
        if not force and runs.cached(folder, experiment.sweep_key(m, prompts, seed=seed)) is not None:
            log.info("[%d/%d] %s %s→%s: cached", i, len(specs), task, src, tgt)
            continue
        log.info("[%d/%d] %s %s→%s", i, len(specs), task, src, tgt)
        experiment.sweep_to_dir(m, prompts, folder, batch_size=batch_size, seed=seed)

    if only is None:
        store = latent_step(
            m, results / "latents" / "translation-fr-zh", n=n, seed=seed, batch_size=batch_size, force=force
        )
        steering_step(m, results / "steering" / "ru-zh", figures, n=n, seed=seed, force=force, reuse_stores=[store])
        patching_step(m, results / "patching_de-fr_into_ru-zh", figures, n=n, seed=seed, force=force)

    for run_dir, name in FEATURED.items():
        for suffix in ("png", "pdf"):
            for kind in ("probabilities", "energy"):
                src_path = results / run_dir / f"{kind}.{suffix}"
                if src_path.exists():
                    shutil.copyfile(src_path, figures / f"{name}_{kind}.{suffix}")
    grid_figures(results, figures, m.name)
    pivot = pivot_table(results)
    pivot.to_csv(results / "pivot_summary.csv", index=False, float_format="%.6g")
    seconds = time.perf_counter() - started
    log.info("reproduction finished in %.0f s", seconds)
    return {"seconds": seconds, "runs": len(specs), "figures": sorted(p.name for p in figures.glob("*.png"))}
