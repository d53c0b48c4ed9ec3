"""``make reproduce``: every experiment of the paper on one model, results under results/, figures under figures/.

The reproduction is a list of settings objects (:func:`plan`), one per step, each run through
:func:`llmlatent.experiments.runs.run`: a step's folder is reused only when its stored cache key (model
identity, every setting that shapes the result, format version) equals the key asked for; ``force``
recomputes. Every step's settings are built (and so validated) before the model loads. The pivot table
and the grid figures read only the folders of these steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd

from llmlatent import checks, latents, model, tasks
from llmlatent.adapter import same_model
from llmlatent.atomic import copy_file
from llmlatent.experiments import geometry, runs
from llmlatent.experiments.base import Clock
from llmlatent.experiments.detour import DetourSettings
from llmlatent.experiments.figures import generation as genplots
from llmlatent.experiments.figures import geometry as geoplots
from llmlatent.experiments.figures import plots
from llmlatent.experiments.figures.geometry import read_paper_lines
from llmlatent.experiments.geometry import GeometrySettings
from llmlatent.experiments.patching import PatchSettings
from llmlatent.experiments.settings import Settings, option
from llmlatent.experiments.steering.bench.plan import SteerBenchSettings
from llmlatent.experiments.steering.plan import DEFAULT_N_CONCEPTS, SteeringSettings
from llmlatent.experiments.sweep import SweepSettings
from llmlatent.languages.registry import PAPER as LANGS
from llmlatent.languages.registry import codes, parse_codes
from llmlatent.lens import generation as genlens
from llmlatent.lens import last_token as lens

if TYPE_CHECKING:
    from llmlatent.latents import LatentStore
    from llmlatent.model import Model

log = logging.getLogger(__name__)

HAND_PROMPT = 'Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "'  # notebook 01's default prompt too
FEATURED = {  # run folder -> figure name in figures/
    "translation/fr-zh": "translation_fr_zh",
    "repetition/zh-zh": "repetition_zh",
    "cloze/fr-fr": "cloze_fr",
}
LATENTS = "latents/translation-fr-zh"  # the fr→zh latent store; the steering demo takes its Chinese fit latents there
GEOMETRY = "geometry/translation-fr-zh"  # the geometry of that store (no forward pass)
STEERING = "steering/ru-zh"
PATCHING = "patching_de-fr_into_ru-zh"  # directly under results/: not results/<task>/<pair>/, which holds sweeps
LATENT_LANGUAGES = "latent_languages"  # sweeps whose every bundled language is a latent language
LATENT_PAIRS = (("fr", "zh"), ("fr", "de"), ("fr", "ja"))
LATENT_CANDIDATES = ("en", "fr", "de", "ru", "zh", "ja", "es", "ko")  # as many as a figure can tell apart
DETOUR = "detour"  # the Schut et al. measurement (every generated answer token at every layer)
STEERBENCH = "steerbench"  # every ordered pair of the five languages, small splits; its fit stores in latents/


@dataclass(frozen=True)
class ReproduceSettings(Settings):
    """The whole reproduction: 30 sweeps, the fr→zh latent store and its geometry, the steering demo and benchmark,
    patching, the detour, every figure."""

    results: str = option("results", "folder of every step's result")
    figures: str = option("figures", "folder of the paper's figures (PNG + PDF)")
    n_prompts: int | None = option(None, "prompts per sweep and in the latent store (default: all)", aliases=("--n",))
    n_concepts: int = option(DEFAULT_N_CONCEPTS, "concepts of the steering demo, cut into fit / select / test")
    n_pairs: int = option(32, "donor/receiver pairs of the patching step (about 2 minutes on 2 idle cores)")
    n_detour: int = option(8, "prompts per target language of the detour step (about 50 s on one core)")
    bench_concepts: int = option(30, "concepts of the steering benchmark step, cut into fit / select / test")
    seed: int = option(0, "seed of every step")
    batch_size: int = option(16, "prompts per forward of the sweeps and the latent store", key=False)
    only: str | None = option(None, "run one task's sweeps only", choices=tasks.TASKS)
    latent: tuple[str, ...] = option(("en",), "latent languages of every sweep and of the grid figures")
    langs: tuple[str, ...] = option(LANGS, "languages of the translation grid and the repetition and cloze rows")
    words_dir: str | None = option(
        None, "folder of word CSVs looked at before the bundled ones (adds languages)", aliases=("--words",)
    )
    paper_repo: str | None = option(
        None, "a clone of epfl-dlab/llm-latent-language: its Llama-2 lines dashed on the fr→zh figures", key=False
    )

    def __post_init__(self) -> None:
        self._set("langs", parse_codes(self.langs, self.words_dir, flag="--langs", at_least=2))
        self._set("latent", parse_codes(self.latent, self.words_dir, flag="--latent"))
        checks.count(self.n_prompts, "n_prompts", optional=True, flag="--n-prompts")
        checks.count(self.batch_size, "batch_size")
        for name in ("results", "figures"):
            path = Path(getattr(self, name))
            if path.exists() and not path.is_dir():
                self.fail(f"--{name} {path} is an existing file; pass a folder (it is created if missing)")
        if self.paper_repo is not None:
            read_paper_lines(self.paper_repo)  # no lines there, or another format: one line before any work


@dataclass(frozen=True)
class Step:
    """One step of the reproduction: its folder under the results and its settings."""

    folder: str
    settings: Settings


def run_specs(langs: tuple[str, ...] = LANGS) -> list[tuple[str, str, str]]:
    """Return every (task, src, tgt) the paper's figures need: every translation pair of ``langs`` (20 for the
    paper's five), one repetition and one cloze sweep per language."""
    specs = [("translation", s, t) for s in langs for t in langs if s != t]
    specs += [("repetition", lang, lang) for lang in langs]
    specs += [("cloze", lang, lang) for lang in langs]
    return specs


def _shared(s: ReproduceSettings) -> dict:
    """Return the sweep settings every paper sweep of the reproduction shares."""
    return {"batch_size": s.batch_size, "latent": s.latent, "words_dir": s.words_dir, "progress": True}


def plan(s: ReproduceSettings) -> list[Step]:
    """Return every step's settings (validated now, before any model work); the store step is collected apart."""
    steps = [
        Step(
            f"{task}/{src}-{tgt}",
            SweepSettings(task=task, src=src, tgt=tgt, n_prompts=s.n_prompts, seed=s.seed, **_shared(s)),
        )
        for task, src, tgt in run_specs(s.langs)
        if s.only in (None, task)
    ]
    if s.only is None:
        steps += latent_language_steps(s)
        store = str(Path(s.results) / LATENTS)
        steps.append(
            Step(
                STEERING,
                SteeringSettings(
                    source="ru", target="zh", via="fr", seed=s.seed, n_concepts=s.n_concepts, reuse_stores=(store,)
                ),
            )
        )
        steps.append(
            Step(
                PATCHING,
                PatchSettings(
                    donor=("de", "fr"),
                    receiver=("ru", "zh"),
                    seed=s.seed,
                    mean_over=("de", "fr", "ru", "en"),
                    n_pairs=s.n_pairs,
                    batch_size=32,
                ),
            )
        )
        steps.append(Step(DETOUR, DetourSettings(n_prompts=s.n_detour, seed=s.seed)))
        bench_store = str(Path(s.results) / "latents" / "steerbench")
        steps.append(
            Step(STEERBENCH, SteerBenchSettings(n_concepts=s.bench_concepts, seed=s.seed, latents_dir=bench_store))
        )
    return steps


def latent_language_steps(s: ReproduceSettings) -> list[Step]:
    """Return the latent-language sweeps: each of :data:`LATENT_PAIRS` whose languages are available, with every
    available language of :data:`LATENT_CANDIDATES` as a latent language."""
    available = codes()
    latent = tuple(c for c in LATENT_CANDIDATES if c in available)
    return [
        Step(
            f"{LATENT_LANGUAGES}/{src}-{tgt}",
            SweepSettings(src=src, tgt=tgt, n_prompts=s.n_prompts, seed=s.seed, **{**_shared(s), "latent": latent}),
        )
        for src, tgt in LATENT_PAIRS
        if src in available and tgt in available
    ]


def latent_languages(results: Path, figures: Path, model_name: str) -> list[Path]:
    """Return the paths of the latent-languages figure after writing it and ``latent_languages.csv`` (per pair and
    latent language: peak layer and value, final value, concepts whose set meets the target's)."""
    folders = [f"{LATENT_LANGUAGES}/{src}-{tgt}" for src, tgt in LATENT_PAIRS]
    summaries, rows = {}, []
    for name, record in list_runs(results, folders).items():
        summary = pd.read_csv(results / name / "summary.csv")
        pair = (str(record["src"]), str(record["tgt"]))
        summaries[pair] = summary
        for lang in record.get("latent", ["en"]):
            column = "p_english_mean" if lang == "en" else f"p_latent_{lang}_mean"
            peak = summary.loc[summary[column].idxmax()]
            overlap = (record.get("latent_target_overlap") or {}).get(lang, 0)
            rows.append({"src": pair[0], "tgt": pair[1], "latent": lang, "peak_layer": int(peak["layer"])})
            rows[-1].update(peak=peak[column], final=summary[column].iloc[-1], target_overlap=overlap)
            rows[-1]["n_prompts"] = record["n_prompts"]
    if not summaries:
        return []
    table = pd.DataFrame(rows)
    table.to_csv(results / "latent_languages.csv", index=False, float_format="%.6g")
    fig = plots.latent_languages_figure(summaries, title=f"every language as a latent language · {model_name}")
    written = plots.save(fig, figures / "latent_languages")
    plt.close(fig)
    return written


def list_runs(results: str | Path, folders: list[str] | None = None, langs: tuple[str, ...] = LANGS) -> dict[str, dict]:
    """Return folder → record of the sweeps under ``results`` (``folders``: only those; default the plan's sweeps
    of ``langs``)."""
    results = Path(results)
    names = folders if folders is not None else [f"{t}/{a}-{b}" for t, a, b in run_specs(langs)]
    out = {}
    for name in names:
        record = runs.read_record(results / name)
        if record is not None and record.get("cache_key", {}).get("kind") == "sweep":
            out[name] = record
    return out


def load_summaries(
    results: Path, task: str, folders: list[str] | None = None, langs: tuple[str, ...] = LANGS
) -> dict[tuple[str, str], pd.DataFrame]:
    """Return {(src, tgt): summary} of every finished sweep of ``task`` among the reproduction's folders."""
    found = {}
    for name, record in list_runs(results, folders, langs).items():
        if record.get("task") == task and (Path(results) / name / "summary.csv").exists():
            found[(str(record["src"]), str(record["tgt"]))] = pd.read_csv(Path(results) / name / "summary.csv")
    return found


def pivot_table(results: Path, folders: list[str] | None = None, langs: tuple[str, ...] = LANGS) -> pd.DataFrame:
    """Return the English-pivot summary of every sweep: peak p_english (layer, value), p_source there, final
    p_target."""
    rows = []
    for _, run in sorted(list_runs(results, folders, langs).items()):
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


def grid_figures(results: Path, figures: Path, model_name: str, langs: tuple[str, ...] = LANGS) -> list[Path]:
    """Return the paths of the pair-grid figures (translation grid, repetition and cloze rows) re-rendered from
    results."""
    written = []
    translation = load_summaries(results, "translation", langs=langs)
    if translation:
        fig = plots.pair_grid(translation, list(langs), title=f"translation, all pairs · {model_name}")
        written += plots.save(fig, figures / "grid_translation")
        plt.close(fig)
    for task in ("repetition", "cloze"):
        summaries = load_summaries(results, task, langs=langs)
        if not summaries:
            continue
        fig = plots.task_row(summaries, task)
        written += plots.save(fig, figures / f"grid_{task}")
        plt.close(fig)
    return written


def latent_step(m: Model, path: Path, *, n: int | None, seed: int, batch_size: int, force: bool) -> LatentStore:
    """Return the fr→zh latent store at ``path``, collecting it unless an identical one is already there."""
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
        latents.remove_store(path)  # never a folder that is not laid out as a latent store
    log.info("collecting latents for %d fr→zh prompts into %s", len(prompts), path)
    return latents.collect(m, prompts, path, batch_size=batch_size)


def geometry_step(m: Model, results: Path, *, seed: int, force: bool) -> dict:
    """Return the record of the geometry of the fr→zh latent store (MDS, Procrustes ranks, norms; no forward pass).

    Its settings are built here, after the store exists (they check the store), not in :func:`plan`.
    """
    settings = GeometrySettings(from_latents=str(results / LATENTS), seed=seed)
    return runs.run(settings, m, results / GEOMETRY, force=force)


def paper_overlays(results: Path, figures: Path, paper_repo: str | Path, model_name: str) -> list[Path]:
    """Return the figures written with the paper's Llama-2 →zh lines dashed over the fr→zh sweep's curves."""
    summary = load_summaries(results, "translation", ["translation/fr-zh"]).get(("fr", "zh"))
    if summary is None:
        log.warning("no translation/fr-zh sweep under %s: no paper overlay drawn", results)
        return []
    lines, title = geoplots.read_paper_lines(paper_repo), f"translation fr→zh · {model_name} vs the paper's Llama-2"
    return geoplots.write_overlays(summary, lines, title, figures / "paper_overlay_fr_zh")


def hand_prompt(m: Model, results: Path, figures: Path) -> None:
    """Write the hand prompt's top tokens per layer and its lens along a 4-token generation (CSVs and figures)."""
    table = lens.top_tokens(m, HAND_PROMPT, k=5)
    table.to_csv(results / "hand_prompt_top_tokens.csv", index=False)
    fig = plots.top_token_heatmap(table, title="logit lens, hand prompt (fr→zh, query 'nuage')")
    plots.save(fig, figures / "hand_prompt_lens")
    plt.close(fig)
    gen = genlens.words_generation(m, HAND_PROMPT, LANGS, max_new_tokens=4, k=3)
    gen.rows.to_csv(results / "hand_prompt_generation.csv", index=False, float_format="%.8g")
    fig = genplots.generation_heatmap(gen.rows, title=f"lens along generation, hand prompt: {gen.texts[0]!r}")
    plots.save(fig, figures / "hand_prompt_generation")
    plt.close(fig)


def copy_figures(results: Path, figures: Path) -> None:
    """Copy the featured sweeps', the steering heatmaps' and the patching figures into ``figures`` (each atomically)."""
    for run_dir, name in FEATURED.items():
        for suffix in ("png", "pdf"):
            for kind in ("probabilities", "energy"):
                if (results / run_dir / f"{kind}.{suffix}").exists():
                    copy_file(results / run_dir / f"{kind}.{suffix}", figures / f"{name}_{kind}.{suffix}")
    for path in (results / STEERING).glob("heatmap_*.*"):
        copy_file(path, figures / f"steering_{path.name.removeprefix('heatmap_')}")
    for path in (results / PATCHING).glob("*.p[nd][gf]"):
        copy_file(path, figures / f"patching_{path.name}")
    for path in (results / DETOUR).glob("*.p[nd][gf]"):
        copy_file(path, figures / (path.name if path.stem == "detour" else f"detour_{path.name}"))
    for path in (results / STEERBENCH).glob("heatmaps.p[nd][gf]"):
        copy_file(path, figures / f"steerbench_{path.name}")
    for path in (results / GEOMETRY).glob("*.p[nd][gf]"):
        copy_file(path, figures / f"geometry_fr_zh_{path.name}")


def run_all(
    model_name: str | None = None, *, force: bool = False, load_kwargs: dict | None = None, **settings: object
) -> dict:
    """Return :func:`run_steps`' summary for ``ReproduceSettings(**settings)`` (``n`` = ``n_prompts``) on a model.

    ``load_kwargs`` go to :func:`llmlatent.model.load` (dtype, device, device_map, trust_remote_code).
    """
    if "n" in settings:
        settings["n_prompts"] = settings.pop("n")
    s = ReproduceSettings(**{k: str(v) if k in ("results", "figures") else v for k, v in settings.items()})
    plan(s)  # every step's settings are validated before the model loads
    return run_steps(s, model.load(model_name, **(load_kwargs or {})), force=force)


def run_steps(s: ReproduceSettings, m: Model, *, force: bool = False) -> dict:
    """Return a summary of the full reproduction after running (or reusing) every step and writing all figures."""
    clock = Clock()
    results, figures = Path(s.results), Path(s.figures)
    steps = plan(s)
    for step in steps:  # every folder is checked before the first computation
        runs.check_out(results / step.folder, runs.experiment_of(step.settings))
    if s.only is None:
        runs.check_out(results / GEOMETRY, geometry.EXPERIMENT)
    if s.only is None and (results / LATENTS).exists():
        latents.check_store_dir(results / LATENTS, repair=True)  # a latent store, or nothing there
    results.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    hand_prompt(m, results, figures)
    sweeps = [step for step in steps if isinstance(step.settings, SweepSettings)]
    for i, step in enumerate(sweeps, 1):
        log.info("[%d/%d] %s", i, len(sweeps), step.folder)
        runs.run(step.settings, m, results / step.folder, force=force)
    if s.only is None:
        latent_step(m, results / LATENTS, n=s.n_prompts, seed=s.seed, batch_size=s.batch_size, force=force)
        geometry_step(m, results, seed=s.seed, force=force)
        for step in steps[len(sweeps) :]:
            runs.run(step.settings, m, results / step.folder, force=force)
    copy_figures(results, figures)
    grid_figures(results, figures, m.name, s.langs)
    latent_languages(results, figures, m.name)
    if s.paper_repo is not None:
        paper_overlays(results, figures, s.paper_repo, m.name)
    pivot_table(results, langs=s.langs).to_csv(results / "pivot_summary.csv", index=False, float_format="%.6g")
    log.info("reproduction finished in %.0f s", clock.total())
    return {"seconds": clock.total(), "runs": len(sweeps), "figures": sorted(p.name for p in figures.glob("*.png"))}
