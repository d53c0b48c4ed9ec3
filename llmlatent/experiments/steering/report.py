"""The steering demo's results: per-setting summaries, the chosen setting, best.json and report tables.

:func:`summarize` turns the tidy per-prompt rows of :class:`llmlatent.experiments.steering.score.NextToken` into one
row per (direction, split, vector, draw, layer, α); :func:`pick` chooses the best steered setting on the select
split; :func:`best_json` reports it on the test split beside every control, with 95% Wilson intervals.

Shares are script shares (:meth:`llmlatent.languages.scripts.OutputJudge.in_script`): ``target_script_top1_share``
counts top-1 tokens with a letter of the target's script, which for a shared script (es among fr and en) counts the
languages that share it too; best.json names them in ``target_script_shared_with``. summary.csv keeps its historic
``cjk_top1_share`` column (any Han character); best.json no longer repeats it, and readers of older records that
hold ``cjk_*`` keys still work (:func:`report_table` reads the keys it knows).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmlatent.adapter import Fingerprint
from llmlatent.experiments.steering import core

if TYPE_CHECKING:
    from llmlatent.languages.scripts import OutputJudge
    from llmlatent.model import Model

GROUP = ["direction", "split", "vector", "draw", "layer", "alpha"]  # one setting of the demo
MEANS = {  # summary column → the per-prompt column it averages
    "p_target_answer": "p_target_answer",
    "p_source_answer": "p_source_answer",
    "cjk_top1_share": "top1_cjk",
    "target_script_top1_share": "top1_target_script",
    "source_script_top1_share": "top1_source_script",
    "correct_target_top1_share": "top1_correct_target",
    "correct_source_top1_share": "top1_correct_source",
}

SHARES = (
    "target_script_top1_share",
    "source_script_top1_share",
    "correct_target_top1_share",
    "correct_source_top1_share",
)
NUMBERS = SHARES + ("p_target_answer", "p_source_answer", "generation_target_share", "generation_correct_share")
INTERVALS = ("target_script_top1_share", "correct_target_top1_share")  # reported with a 95% interval


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Return one row per (direction, split, vector, draw, layer, alpha): prompt count and mean of every metric."""
    return core.summarize(rows, GROUP, MEANS)


def pick(summary: pd.DataFrame, direction: str, split: str = "select") -> pd.Series:
    """Return the best steered setting of ``direction`` on ``split``: most target-script top-1, then p(answer), then
    earliest layer."""
    part = summary[
        (summary["direction"] == direction)
        & (summary["split"] == split)
        & (summary["vector"] == "mean_difference")
        & (summary["alpha"] != 0)
    ]
    return core.choose(part, ["direction"], ["target_script_top1_share", "p_target_answer"]).iloc[0]


def wilson(share: float, n: int, z: float = 1.959964) -> list[float] | None:
    """Return the 95% Wilson score interval [low, high] of a proportion ``share`` of ``n`` (None when n = 0).

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0/n or n/n.
    """
    if not n or share is None or pd.isna(share):
        return None
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return [round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)]


def _numbers(part: pd.Series | pd.DataFrame, prefix: str = "") -> dict:
    """Return the reported metrics of one summary row (several random draws: their mean; ``n`` = prompts per draw).

    Draws share their prompts, so the interval of a mean over draws uses the prompts of one draw (conservative).
    """
    n = int(part["n"].iloc[0]) if isinstance(part, pd.DataFrame) else int(part["n"])
    row = part.mean(numeric_only=True) if isinstance(part, pd.DataFrame) else part
    out: dict[str, Any] = {prefix + "n": n}
    for k in NUMBERS:
        value = row.get(k)
        out[prefix + k] = None if value is None or pd.isna(value) else round(float(value), 6)
    for k in INTERVALS:
        out[prefix + k + "_ci95"] = wilson(out[prefix + k], n)
    return out


def best_json(
    summary: pd.DataFrame,
    rows: pd.DataFrame,
    settings: dict,
    layers: list[int],
    splits: dict[str, list[str]],
    model: Model,
    wrong_to: str,
    judge: OutputJudge,
) -> dict:
    """Return best.json's content: the setting chosen on the select split and its test-split numbers with every
    control (shares judged by ``judge``'s script verdict)."""
    source, target = settings["source"], settings["target"]
    name, flip = f"{source}→{target}", f"{target}→{source}"
    chosen = pick(summary, name)
    layer, alpha = int(chosen["layer"]), float(chosen["alpha"])

    def at(direction: str, split: str, vector: str, alpha_: float | None = None) -> pd.DataFrame:
        part = summary[
            (summary["direction"] == direction) & (summary["split"] == split) & (summary["vector"] == vector)
        ]
        return part if alpha_ is None else part[part["alpha"] == alpha_]

    wrong_rows = rows[(rows["direction"] == name) & (rows["split"] == "test") & (rows["vector"] == "wrong_pair")]
    result = {
        "direction": name,
        "source": source,
        "target": target,
        "via": settings["via"],
        "target_script": "+".join(judge.scripts[target]),
        "target_script_shared_with": list(judge.shared_with(target)),
        "model": Fingerprint.of(model.fingerprint()).to_dict(),
        "settings": {k: v for k, v in settings.items()},
        "layers": layers,
        "alphas": settings["alphas"],
        "splits": splits,
        "n_fit_concepts": len(splits["fit"]),
        "n_select_concepts": len(splits["select"]),
        "n_test_concepts": len(splits["test"]),
        "chosen_on": "select",
        "reported_on": "test",
        "layer": layer,
        "alpha": alpha,
        **_numbers(at(name, "test", "mean_difference", alpha).iloc[0]),
        **_numbers(at(name, "test", "mean_difference", 0.0).iloc[0], "baseline_"),
        "random_control_draws": len(at(name, "test", "random")),
        **(_numbers(at(name, "test", "random"), "random_control_") if len(at(name, "test", "random")) else {}),
        "wrong_pair": {
            "towards": wrong_to,
            "away_from": settings["wrong_pair"][1],
            "vector": f"mu_{wrong_to} - mu_{settings['wrong_pair'][1]}, rescaled to the norm of Δ",
        },
        **_numbers(at(name, "test", "wrong_pair").iloc[0], "wrong_pair_"),
        "wrong_pair_own_script_top1_share": round(
            float(np.mean([judge.in_script(t, wrong_to) for t in wrong_rows["top1_token"]])), 6
        ),
        **_numbers(chosen, "select_"),
    }
    if settings["flip"] and len(at(flip, "select", "mean_difference")):
        result["flip"] = flip_record(summary, flip, layer)
    return result


def flip_record(summary: pd.DataFrame, flip: str, layer: int) -> dict:
    """Return best.json's flip entry: −Δ's α chosen on the select split, its test numbers, baseline, random control."""
    own = pick(summary, flip)
    flip_alpha = float(own["alpha"])
    part = summary[(summary["direction"] == flip) & (summary["split"] == "test")]
    steered, random = part[part["vector"] == "mean_difference"], part[part["vector"] == "random"]
    return {
        "direction": flip,
        "layer": layer,
        "alpha": flip_alpha,
        "chosen_on": "select",
        "reported_on": "test",
        **_numbers(steered[steered["alpha"] == flip_alpha].iloc[0]),
        **_numbers(steered[steered["alpha"] == 0.0].iloc[0], "baseline_"),
        "random_control_draws": len(random),
        **(_numbers(random, "random_control_") if len(random) else {}),
        **_numbers(own, "select_"),
    }


TABLE_COLUMNS = {
    "n": "prompts",
    "target_script_top1_share": "target-script top-1",
    "correct_target_top1_share": "correct target word top-1",
    "p_target_answer": "p(correct target)",
    "p_source_answer": "p(correct source)",
    "generation_target_share": "generations in target script",
}


def report_table(best: dict) -> pd.DataFrame:
    """Return the test-split numbers of best.json as a table: one row per setting (baseline, Δ, each control, flip)."""
    name, flip = best["direction"], best.get("flip")
    settings = [
        (f"{name} baseline (α = 0)", best, "baseline_"),
        (f"{name} Δ at layer {best['layer']}, α = {best['alpha']:g}", best, ""),
        (f"{name} random directions, same norm ({best.get('random_control_draws', 0)} draws)", best, "random_control_"),
        (
            f"{name} wrong pair μ_{best['wrong_pair']['towards']} − μ_{best['wrong_pair']['away_from']}, same norm",
            best,
            "wrong_pair_",
        ),
    ]
    if flip:
        settings += [
            (f"{flip['direction']} baseline (α = 0)", flip, "baseline_"),
            (f"{flip['direction']} −Δ at layer {flip['layer']}, α = {flip['alpha']:g}", flip, ""),
            (
                f"{flip['direction']} random directions, same norm ({flip.get('random_control_draws', 0)} draws)",
                flip,
                "random_control_",
            ),
        ]
    rows = {
        label: {title: part.get(prefix + key) for key, title in TABLE_COLUMNS.items()}
        for label, part, prefix in settings
        if part.get(prefix + "n") is not None
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def generation_table(generations: pd.DataFrame, direction: str) -> pd.DataFrame:
    """Return the greedy answers of one direction as concept × setting (``expected`` first)."""
    shown = generations[generations["direction"] == direction]
    label = shown["vector"].where(shown["alpha"] == 0, shown["vector"] + " α=" + shown["alpha"].map("{:g}".format))
    shown = shown.assign(setting=label.where(shown["alpha"] != 0, "baseline"))
    table = shown.pivot_table(index="concept", columns="setting", values="answer", aggfunc="first")
    expected = shown.drop_duplicates("concept").set_index("concept")["expected"]
    return pd.concat([expected, table], axis=1)


def read_results(out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (summary, generations) of a run folder written by :func:`llmlatent.experiments.runs.run`."""
    out = Path(out)
    return pd.read_csv(out / "summary.csv"), pd.read_csv(out / "generations.csv")
