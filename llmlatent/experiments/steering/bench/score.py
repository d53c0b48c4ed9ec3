"""Scoring steering settings on one pair's prompts: language forcing, concept kept, source removed, their score.

A pair's prompts of one split come in batches, each with the KV cache of all but its last token
(:class:`llmlatent.prefix.Prefix`); every setting of a call (methods × layers × α, or the test's chosen
settings and controls) runs tiled on that one cache (:func:`llmlatent.steering.batched.generate_scored`). Per
prompt and setting:

* ``forced``: the greedy answer is in the target language (:meth:`llmlatent.languages.identify.LanguageId.forced`:
  the concept's target token set first, lingua otherwise);
* ``concept_kept``: the next token lies in the concept's target-language token set (the correct word);
* ``p_source``, ``p_target``: the probability of the concept's source- and target-language token sets.

:func:`summarize` gives one row per setting; ``score`` is the harmonic mean of the forcing and the
concept-kept shares (CLaS-Bench's form) and ``source_removed`` the drop of ``p_source`` from α = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from llmlatent.experiments.steering.evaluate import Item, answer_of
from llmlatent.prefix import Prefix
from llmlatent.steering.batched import generate_scored

if TYPE_CHECKING:
    from llmlatent.languages.identify import LanguageId
    from llmlatent.model import Model

KEYS = ["source", "target", "split", "method", "draw", "layer", "alpha"]
MAX_ROWS = 256  # rows (settings × prompts) per generate call, as the demo


def baseline() -> Item:
    """Return the unsteered setting (α = 0, no vector) under the method name ``baseline``."""
    return Item("baseline", 0, None, 0.0, None)


class PairPrompts:
    """One split's prompts of source → target: answering in source, with both languages' token sets per concept."""

    def __init__(
        self, model: Model, source: pd.DataFrame, target: pd.DataFrame, concepts: Sequence[str], batch_size: int
    ) -> None:
        self.model, self.frame = model, source.loc[list(concepts)].reset_index(drop=True)
        self.target_sets = [list(target.loc[c, "target_ids"]) for c in self.frame["concept"]]
        self.source_sets = [list(x) for x in self.frame["target_ids"]]
        cuts = [*range(0, len(self.frame), batch_size), len(self.frame)]
        self.batches = [
            (a, b, Prefix.of(model, self.frame["prompt"].iloc[a:b].tolist())) for a, b in zip(cuts, cuts[1:])
        ]


def evaluate(
    prompts: PairPrompts, lid: LanguageId, pair: tuple[str, str], split: str, items: Sequence[Item], max_new: int
) -> pd.DataFrame:
    """Return tidy rows (setting × prompt) of every setting in ``items`` on ``prompts``, settings in order."""
    source, target = pair
    tok, parts = prompts.model.tokenizer, []
    for a, b, prefix in prompts.batches:
        t_sets, s_sets = prompts.target_sets[a:b], prompts.source_sets[a:b]
        scored = generate_scored(
            prompts.model,
            prefix,
            [item.steering() for item in items],
            {"target": t_sets, "source": s_sets},
            max_new_tokens=max_new,
            max_rows=MAX_ROWS,
        )
        frame = prompts.frame.iloc[a:b]
        for j, item in enumerate(items):
            top = scored.top1[j].tolist()
            kept = [t in set(ts) for t, ts in zip(top, t_sets)]
            answers = [answer_of(x) for x in scored.texts[j]]
            parts.append(
                pd.DataFrame(
                    {
                        "source": source,
                        "target": target,
                        "split": split,
                        "method": item.kind,
                        "draw": item.draw,
                        "layer": item.layer,
                        "alpha": item.alpha,
                        "prompt_id": frame["prompt_id"].to_numpy(),
                        "concept": frame["concept"].to_numpy(),
                        "p_target": scored.p["target"][j].numpy(),
                        "p_source": scored.p["source"][j].numpy(),
                        "top1_token": tok.batch_decode([[t] for t in top]),
                        "concept_kept": kept,
                        "source_top1": [t in set(ss) for t, ss in zip(top, s_sets)],
                        "answer": answers,
                        "detected": [lid.detect(x) for x in answers],
                        "forced": [lid.forced(x, target, k) for x, k in zip(answers, kept)],
                    }
                )
            )
    rows = pd.concat(parts, ignore_index=True)  # batch-major: sort to settings in order, then prompts
    rows["_setting"] = [j for a, b, _ in prompts.batches for j in range(len(items)) for _ in range(b - a)]
    rows = rows.sort_values("_setting", kind="stable").drop(columns="_setting").reset_index(drop=True)
    rows["layer"] = rows["layer"].astype("Int64")
    return rows


def harmonic(a: float, b: float) -> float:
    """Return the harmonic mean 2ab / (a + b) of two shares (0 when both are 0)."""
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Return one row per setting (KEYS): prompts, shares, mean probabilities, score and source removed."""
    agg = rows.groupby(KEYS, dropna=False, sort=False).agg(
        n=("prompt_id", "size"),
        forcing=("forced", "mean"),
        concept_kept=("concept_kept", "mean"),
        p_target=("p_target", "mean"),
        p_source=("p_source", "mean"),
    )
    agg = agg.reset_index()
    agg["score"] = [harmonic(f, c) for f, c in zip(agg["forcing"], agg["concept_kept"])]
    base = agg[agg["method"] == "baseline"].set_index(["source", "target", "split"])["p_source"]
    index = pd.MultiIndex.from_frame(agg[["source", "target", "split"]])
    agg["source_removed"] = base.reindex(index).to_numpy() - agg["p_source"].to_numpy()
    return agg


def choose(summary: pd.DataFrame) -> pd.DataFrame:
    """Return the chosen (layer, α) per (source, target, method), read from the select split only.

    Highest score, then p_target, then the earliest layer and smallest α.
    """
    part = summary[(summary["split"] == "select") & (summary["method"] != "baseline")]
    part = part.sort_values(
        ["score", "p_target", "layer", "alpha"], ascending=[False, False, True, True], kind="stable"
    )
    chosen = part.groupby(["source", "target", "method"], sort=False).head(1)
    return chosen[["source", "target", "method", "layer", "alpha", "score"]].rename(columns={"score": "select_score"})
