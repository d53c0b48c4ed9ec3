"""The benchmark's report: per-setting summaries and the choice, a tidy pair × method × split × metric table with 95 %
intervals, the best method per pair.

Per prompt and setting the rows (:class:`llmlatent.experiments.steering.score.Greedy`) say whether the greedy answer is
in the target language (``forced``: the judge's language verdict), whether the first token starts the concept's
target word (``concept_kept``) and p of both words' token sets. :func:`summarize` gives one row per setting;
``score`` is the harmonic mean of the forcing and the concept-kept shares (CLaS-Bench's form) and
``source_removed`` the drop of ``p_source`` from α = 0. :func:`choose` reads the select split only.

Intervals are percentile bootstraps over prompts (seeded, ``N_BOOT`` resamples): every metric, the
harmonic-mean score included, is recomputed on each resample of the setting's prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llmlatent.adapter import Fingerprint
from llmlatent.experiments.steering import core

if TYPE_CHECKING:
    from llmlatent.experiments.steering.bench.plan import SteerBenchSettings
    from llmlatent.model import Model

N_BOOT = 1000
METRICS = ("score", "forcing", "concept_kept", "source_removed", "p_source", "p_target")
KEYS = ["source", "target", "split", "method", "draw", "layer", "alpha"]  # one setting of the benchmark
MEANS = {"forcing": "forced", "concept_kept": "concept_kept", "p_target": "p_target", "p_source": "p_source"}


def harmonic(a: float, b: float) -> float:
    """Return the harmonic mean 2ab / (a + b) of two shares (0 when both are 0)."""
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Return one row per setting (KEYS): prompts, shares, mean probabilities, score and source removed."""
    agg = core.summarize(rows, KEYS, MEANS)
    agg["score"] = [harmonic(f, c) for f, c in zip(agg["forcing"], agg["concept_kept"])]
    base = agg[agg["method"] == "baseline"].set_index(["source", "target", "split"])["p_source"]
    index = pd.MultiIndex.from_frame(agg[["source", "target", "split"]])
    agg["source_removed"] = base.reindex(index).to_numpy() - agg["p_source"].to_numpy()
    return agg


def choose(summary: pd.DataFrame) -> pd.DataFrame:
    """Return the chosen (layer, α) per (source, target, method), read from the select split only.

    Highest score, then p_target, then the earliest layer and smallest α (:func:`.core.choose`).
    """
    part = summary[(summary["split"] == "select") & (summary["method"] != "baseline")]
    chosen = core.choose(part, ["source", "target", "method"], ["score", "p_target"])
    return chosen[["source", "target", "method", "layer", "alpha", "score"]].rename(columns={"score": "select_score"})


def _metrics(f: np.ndarray, c: np.ndarray, ps: np.ndarray, pt: np.ndarray, base_ps: np.ndarray) -> dict:
    """Return each metric from per-prompt columns (the last axis is the prompts; leading axes are resamples)."""
    forcing, kept = f.mean(-1), c.mean(-1)
    total = forcing + kept
    score = np.where(total > 0, 2 * forcing * kept / np.where(total > 0, total, 1), 0.0)
    return {
        "score": score,
        "forcing": forcing,
        "concept_kept": kept,
        "source_removed": base_ps.mean(-1) - ps.mean(-1),
        "p_source": ps.mean(-1),
        "p_target": pt.mean(-1),
    }


def intervals(part: pd.DataFrame, base: pd.DataFrame, seed: int) -> list[dict]:
    """Return one row per metric: its value and 95 % bootstrap interval over the prompts of ``part``.

    ``base`` is the baseline (α = 0) rows of the same prompts, resampled with them (source removed is paired).
    """
    base = base.set_index("prompt_id").loc[part["prompt_id"]]
    cols = [
        part["forced"].to_numpy(float),
        part["concept_kept"].to_numpy(float),
        part["p_source"].to_numpy(float),
        part["p_target"].to_numpy(float),
        base["p_source"].to_numpy(float),
    ]
    point = _metrics(*cols)
    idx = np.random.default_rng(seed).integers(0, len(part), size=(N_BOOT, len(part)))
    boot = _metrics(*(x[idx] for x in cols))
    return [
        {
            "metric": k,
            "value": float(point[k]),
            "low": float(np.quantile(boot[k], 0.025)),
            "high": float(np.quantile(boot[k], 0.975)),
        }
        for k in METRICS
    ]


def tidy_table(rows: pd.DataFrame, chosen: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Return the tidy table: per pair, method (and its controls) and split, every metric with its interval.

    ``setting`` is ``steered`` (the method at its chosen layer and α), ``baseline``, ``random`` (mean of
    the draws' prompts pooled) or ``wrong_pair``, the controls at the method's chosen layer and α.
    """
    out = []
    for pick in chosen.itertuples():
        pair = rows[(rows["source"] == pick.source) & (rows["target"] == pick.target)]
        for split in ("select", "test"):
            here = pair[pair["split"] == split]
            base = here[here["method"] == "baseline"]
            at = here[(here["layer"] == pick.layer) & (here["alpha"] == pick.alpha)]
            parts = {"steered": at[at["method"] == pick.method], "baseline": base}
            if split == "test":
                parts.update(random=at[at["method"] == "random"], wrong_pair=at[at["method"] == "wrong_pair"])
            for setting, part in parts.items():
                if not len(part):
                    continue
                head = {"source": pick.source, "target": pick.target, "method": pick.method, "setting": setting}
                head.update(split=split, layer=pick.layer, alpha=pick.alpha, n=len(part))
                out += [{**head, **m} for m in intervals(part, base, seed)]
    return pd.DataFrame(out)


def best_per_pair(table: pd.DataFrame) -> pd.DataFrame:
    """Return per pair the method of highest test score (its chosen layer and α), beside α = 0 and the runner-up.

    Methods with the same top score (``mean_diff`` and ``pca`` often give the same top-1 tokens) tie:
    ``best_method`` is ``tie`` and ``tied`` names them; ``layer`` is then the earliest of theirs.
    """
    test = table[(table["split"] == "test") & (table["metric"] == "score")]
    steered = test[test["setting"] == "steered"].sort_values(
        ["source", "target", "value", "layer"], ascending=[True, True, False, True], kind="stable"
    )
    base = test[test["setting"] == "baseline"].drop_duplicates(["source", "target"]).set_index(["source", "target"])
    rows = []
    for (source, target), part in steered.groupby(["source", "target"], sort=False):
        top = part.iloc[0]
        tied = sorted(part.loc[part["value"] >= top["value"] - 1e-9, "method"])
        rows.append(
            {
                "source": source,
                "target": target,
                "best_method": top["method"] if len(tied) == 1 else "tie",
                "tied": "+".join(tied),
                "layer": int(top["layer"]),
                "alpha": float(top["alpha"]),
                "test_score": float(top["value"]),
                "low": float(top["low"]),
                "high": float(top["high"]),
                "runner_up": part.iloc[1]["method"] if len(part) > 1 else None,
                "margin": float(top["value"] - part.iloc[1]["value"]) if len(part) > 1 else None,
                "baseline_score": float(base.loc[(source, target), "value"]),
            }
        )
    return pd.DataFrame(rows)


def record(
    s: SteerBenchSettings,
    model: Model,
    layers: list[int],
    chosen: pd.DataFrame,
    best: pd.DataFrame,
    table: pd.DataFrame,
    extra: dict,
) -> dict:
    """Return summary.json's content: settings, wins per method, mean test score per method, the chosen settings."""
    test = table[(table["split"] == "test") & (table["metric"] == "score")]
    means = test[test["setting"] == "steered"].groupby("method")["value"].mean()
    controls = test[test["setting"] != "steered"].groupby("setting")["value"].mean()
    wins = best["best_method"].value_counts()  # strict wins; a tie counts for no method
    return {
        "langs": list(s.langs),
        "methods": list(s.methods),
        "pairs": len(s.pairs()),
        "model": Fingerprint.of(model.fingerprint()).to_dict(),
        "settings": {k: v for k, v in s.to_dict().items() if k not in ("latents_dir", "words_dir")},
        "layers": layers,
        "alphas": list(s.alphas),
        "chosen_on": "select",
        "reported_on": "test",
        "language_id": {"detector": "lingua", "restricted_to": list(s.langs), "token_set_first": True},
        "wins": {m: int(wins.get(m, 0)) for m in s.methods},
        "ties": int(wins.get("tie", 0)),
        "in_top_tie_or_win": {m: int(best["tied"].str.split("+").map(lambda x, m=m: m in x).sum()) for m in s.methods},
        "mean_test_score": {m: round(float(v), 6) for m, v in means.items()},
        "mean_control_score": {k: round(float(v), 6) for k, v in controls.items()},
        "best": best.to_dict(orient="records"),
        **extra,
    }
