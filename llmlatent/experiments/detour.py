"""The Schut et al. (2025, arXiv 2502.15603) measurement: does each generated answer token detour through English?

For every non-English target language of ``langs``, few-shot translation prompts ``src → target`` (the
sweep's prompts, :func:`llmlatent.tasks.build`, with the paper's filters) are answered greedily for
``max_new_tokens`` tokens (:func:`llmlatent.lens.generation.generation`, KV-cached). At every generated token and
every layer the lens gives ``p_<lang>`` for every language of ``langs`` (and the source): the probability
mass of the token set (the paper's rule) of the concept's word in that language.

Prompts translate from French by default (``src``), as the paper's Figure 2 does, not from English: an
English source word in the prompt could be copied, and a "detour through English" would then be an echo
of the input. For the target French itself the source is ``alt_src`` (German). Each language's set is
made disjoint from the target's and English's (their ids removed), so no token counts for two roles; the
target and English sets are disjoint by the paper's filter already.

The summary (rows per target × step × layer, means over prompts; ``step`` 0 is the first answer token,
where the concept is chosen; later steps are mostly the closing quote) gives p_english, p_target,
p_source and the best other language; the record gives, per target on step 0, the layer where the
English curve peaks and the first layer from there on where the target's curve is above it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llmlatent import checks, tasks
from llmlatent.experiments.base import Clock, Experiment
from llmlatent.experiments.patching import parse_langs
from llmlatent.experiments.settings import Settings, option
from llmlatent.languages.registry import check_lang, codes, parse_codes
from llmlatent.languages.words import read_table
from llmlatent.lens import generation as genlens
from llmlatent.tokens import token_set

if TYPE_CHECKING:
    from llmlatent.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetourSettings(Settings):
    """Greedy answers of translation prompts into every non-English language, each token read at every layer."""

    langs: tuple[str, ...] = option(
        codes(),
        "languages (comma-separated, must include en; default every bundled one): every non-English one is a "
        "target, every one a curve",
        parse=lambda s: parse_langs(s, "--langs"),
    )
    src: str = option("fr", "source language of the few-shot translation prompts")
    alt_src: str = option("de", "source language for the target --src itself")
    n_prompts: int | None = option(8, "prompts per target language (default 8; none: all)", aliases=("--n",))
    max_new_tokens: int = option(3, "greedily generated answer tokens per prompt")
    k: int = option(1, "top tokens per generated token × layer in rows.csv")
    seed: int = option(0, "seed of the prompt draw and the few-shot examples")
    words_dir: str | None = option(
        None, "folder of word CSVs (bundled or seed layout)", digest=True, aliases=("--words",), key_name="words"
    )
    batch_size: int = option(8, "prompts generated together (does not change the numbers)", key=False)

    def __post_init__(self) -> None:
        self._set("langs", parse_codes(self.langs, self.words_dir, flag="--langs"))
        for lang in (self.src, self.alt_src):
            check_lang(lang, self.words_dir)
        if "en" not in self.langs:
            self.fail(f"--langs must include en (the English curve), got {','.join(self.langs)}")
        if not self.targets():
            self.fail("--langs needs a language other than en to translate into, e.g. --langs en,zh")
        if self.alt_src in (self.src, "en"):
            self.fail(f"--alt-src must differ from --src {self.src} and from en, got {self.alt_src}")
        checks.count(self.n_prompts, "n_prompts", optional=True, flag="--n-prompts")
        checks.count(self.max_new_tokens, "max_new_tokens")
        checks.count(self.k, "k")
        checks.count(self.batch_size, "batch_size")

    def targets(self) -> list[str]:
        """Return the target languages: every language of ``langs`` but English."""
        return [lang for lang in self.langs if lang != "en"]

    def source_of(self, tgt: str) -> str:
        """Return the source language of the prompts into ``tgt``."""
        return self.alt_src if tgt == self.src else self.src


@dataclass(frozen=True)
class DetourResult:
    """Computed detour: tidy rows (target × prompt × step × layer × rank), the summary, headline and metadata."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    headline: dict
    meta: dict


def prompt_sets(prompts: pd.DataFrame, table: pd.DataFrame, langs: list[str], tokenizer: object) -> list[dict]:
    """Return per prompt: language → token ids of the concept's word (others made disjoint from target/English)."""
    out = []
    for row in prompts.itertuples(index=False):
        roles = {"en": list(row.english_ids), row.tgt: list(row.target_ids)}
        taken = set(roles["en"]) | set(roles[row.tgt])
        sets = {}
        for lang in langs:
            if lang in roles:
                sets[lang] = roles[lang]
            else:
                word = table.at[row.concept, f"word_{lang}"] if row.concept in table.index else ""
                sets[lang] = [t for t in token_set(tokenizer, str(word)) if t not in taken]
        out.append(sets)
    return out


def compute(model: Model, settings: DetourSettings) -> DetourResult:
    """Return the rows, summary and headline of the detour measurement (see the module docstring)."""
    s, clock, parts = settings, Clock(), []
    for tgt in s.targets():
        src = s.source_of(tgt)
        langs = list(dict.fromkeys([*s.langs, src]))
        with clock(f"prompts_{tgt}"):
            prompts = tasks.build(
                "translation", src, tgt, model.tokenizer, n=s.n_prompts, seed=s.seed, words_dir=s.words_dir
            ).df
            table = read_table(langs, s.words_dir).set_index("concept")
            sets = prompt_sets(prompts, table, langs, model.tokenizer)
        with clock(f"generate_{tgt}"):
            log.info("detour %s→%s: %d prompts × %d tokens", src, tgt, len(prompts), s.max_new_tokens)
            gen = genlens.generation(
                model, prompts["prompt"].tolist(), sets, max_new_tokens=s.max_new_tokens, k=s.k, batch_size=s.batch_size
            )
        rows = gen.rows
        rows.insert(0, "tgt", tgt)
        rows.insert(1, "src", src)
        rows.insert(3, "concept", prompts["concept"].to_numpy()[rows["prompt_id"]])
        rows["in_answer"] = answer_steps(rows)
        parts.append(rows)
    rows = pd.concat(parts, ignore_index=True)
    summary = summarize(rows, s)
    meta = {
        "langs": list(s.langs),
        "targets": s.targets(),
        "sources": {t: s.source_of(t) for t in s.targets()},
        "n_prompts": {t: int(rows.loc[rows["tgt"] == t, "prompt_id"].nunique()) for t in s.targets()},
        "max_new_tokens": s.max_new_tokens,
        "seed": s.seed,
        "timings": clock.rounded(),
    }
    return DetourResult(rows, summary, headline(summary), meta)


def answer_steps(rows: pd.DataFrame) -> np.ndarray:
    """Return per row whether its step comes before the first generated token holding a quote or a line break."""
    first = rows.drop_duplicates(["prompt_id", "step"])
    ends = first[first["generated_token"].str.contains('["\n]', regex=True)].groupby("prompt_id")["step"].min()
    end = rows["prompt_id"].map(ends).fillna(np.inf)
    return (rows["step"] < end).to_numpy()


def summarize(rows: pd.DataFrame, s: DetourSettings) -> pd.DataFrame:
    """Return per target × step × layer: prompts, mean p_english / p_target / p_source / best other, top-1 shares."""
    top = rows[rows["rank"] == 1]
    out = []
    for (tgt, step, layer), part in top.groupby(["tgt", "step", "layer"], sort=True):
        src = part["src"].iloc[0]
        others = {lang: part[f"p_{lang}"].mean() for lang in s.langs if lang not in ("en", tgt, src)}
        best = max(others, key=others.get) if others else None
        out.append(
            {
                "tgt": tgt,
                "src": src,
                "step": step,
                "layer": layer,
                "n_prompts": part["prompt_id"].nunique(),
                "p_english": part["p_en"].mean(),
                "p_target": part[f"p_{tgt}"].mean(),
                "p_source": part[f"p_{src}"].mean(),
                "p_other_best": others.get(best, np.nan),
                "other_best_lang": best,
                "top1_english": part["in_en"].mean(),
                "top1_target": part[f"in_{tgt}"].mean(),
            }
        )
    order = {tgt: i for i, tgt in enumerate(s.targets())}
    frame = pd.DataFrame(out)
    frame = frame.assign(order=frame["tgt"].map(order)).sort_values(["order", "step", "layer"])
    return frame.drop(columns="order").reset_index(drop=True)


def headline(summary: pd.DataFrame) -> dict:
    """Return per target (first answer token): English peak layer and value, the layer where the target overtakes
    English after it (None: never), the final p_target and the share of answers that start the target word."""
    out = {}
    for tgt, part in summary[summary["step"] == 0].groupby("tgt", sort=False):
        part = part.sort_values("layer")
        english, target = part["p_english"].to_numpy(), part["p_target"].to_numpy()
        peak = int(np.argmax(english))  # the first layer of the highest mean p(English)
        layers = part["layer"].to_numpy()
        after = [int(layer) for layer, e, t in zip(layers, english, target) if layer >= layers[peak] and t > e]
        out[tgt] = {
            "english_peak_layer": int(layers[peak]),
            "english_peak": round(float(english[peak]), 4),
            "target_overtakes_at": after[0] if after else None,
            "final_target": round(float(target[-1]), 4),
            "final_english": round(float(english[-1]), 4),
            "answers_start_target": round(float(part["top1_target"].iloc[-1]), 4),
        }
    return out


def write(result: DetourResult, folder: Path) -> dict:
    """Return run.json's own fields after writing rows.csv, summary.csv, detour.png/pdf and a generation heatmap."""
    import matplotlib.pyplot as plt

    from llmlatent.experiments.figures import generation as genplots
    from llmlatent.experiments.figures import plots

    result.rows.to_csv(folder / "rows.csv", index=False, float_format="%.8g")
    result.summary.to_csv(folder / "summary.csv", index=False, float_format="%.8g")
    fig = genplots.detour_figure(result.summary[result.summary["step"] == 0], title="first answer token, every layer")
    plots.save(fig, folder / "detour")
    plt.close(fig)
    targets = result.meta["targets"]
    tgt = "zh" if "zh" in targets else targets[0]  # the paper's featured target (single-character answers)
    first = result.rows[result.rows["tgt"] == tgt]
    title = f"{first['src'].iloc[0]}→{tgt}, concept {first['concept'].iloc[0]!r}"
    fig = genplots.generation_heatmap(first, prompt_id=0, colour="probability", title=title)
    plots.save(fig, folder / "generation")
    plt.close(fig)
    return {**result.meta, "detour": result.headline}


HEADLINE = ("n_prompts", "seconds", "detour")


def describe(s: DetourSettings) -> str:
    """Return the settings in a log line."""
    return f"detour into {','.join(s.targets())} from {s.src}"


EXPERIMENT = Experiment(
    "detour",
    DetourSettings,
    compute,
    write,
    command="detour",
    help="every generated answer token at every layer: p(English) vs p(target) (Schut et al.)",
    format_version=1,
    headline=HEADLINE,
    describe=describe,
)
