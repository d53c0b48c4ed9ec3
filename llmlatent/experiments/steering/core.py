"""The steering loop both experiments run: prompt frames, splits, settings (items), batches, evaluate, summarize,
choose, controls.

The demo (:mod:`.demo`: one pair, Δ = mean difference, controls, the flip) and the benchmark (:mod:`.bench.bench`:
every ordered pair × four methods) are thin on top of these pieces:

1. :func:`prompt_frames`: translation prompts ``via → lang`` for every (via, lang) a run needs, indexed by concept;
   :func:`concept_pool` is the concepts they all hold;
2. :func:`make_splits` / :func:`split_concepts`: disjoint seeded fit / select / test thirds (the demo adds flip
   subsets of select and test);
3. the fit: latent stores of the fit prompts (:mod:`.fit`), averaged per method by each experiment;
4. :class:`Item`: one evaluated setting, a :class:`~llmlatent.steering.vector.Setting` with its labels (kind,
   draw); :func:`controls` gives the random directions and the wrong pair at a chosen (layer, α);
5. :func:`batches` → :func:`evaluate`: every item on every batch (one prefix KV cache per batch, the items tiled),
   scored by one of :mod:`.score`'s scorers, as tidy rows, settings in order then prompts;
6. :func:`summarize` (means per setting) and :func:`choose` (the best setting per group on the select split).

The output language is judged by :class:`llmlatent.languages.scripts.OutputJudge`, in :mod:`.score`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import numpy as np
import pandas as pd

from llmlatent import tasks
from llmlatent.errors import DataError
from llmlatent.prefix import Prefix
from llmlatent.steering.vector import Setting, check_alpha

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmlatent.model import Model
    from llmlatent.steering.vector import SteeringVector

MAX_ALPHA = 100.0  # α is a multiple of a difference of mean residuals; beyond this it only measures breakage


# ---------------------------------------------------------------- settings helpers shared by both experiments


def default_layers(n_layers: int, k: int = 6) -> list[int]:
    """Return up to ``k`` layers spread over the middle and late blocks (30 % … 90 % of the depth)."""
    return sorted({int(round(x)) for x in np.linspace(0.3 * (n_layers - 1), 0.9 * (n_layers - 1), k)})


def checked_alphas(alphas: Sequence[float], fail: Callable[[str], NoReturn], what: str) -> tuple[float, ...]:
    """Return the sorted non-zero α of ``alphas``; ``fail`` gets one line for a value outside [0, MAX_ALPHA] or none.

    ``what`` says what α multiplies in that line.
    """
    values = set()
    for a in alphas:
        a = check_alpha(a)
        if a < 0 or a > MAX_ALPHA:
            fail(f"alphas must be between 0 and {MAX_ALPHA:g} ({what}), got {a:g}")
        values.add(a)
    if not values - {0.0}:
        fail("alphas needs at least one non-zero value (α = 0, the baseline, is always included)")
    return tuple(sorted(values - {0.0}))


# ---------------------------------------------------------------- prompts and splits


def prompt_frames(
    tokenizer: PreTrainedTokenizerBase, wanted: Iterable[tuple[str, str]], seed: int, words: str | None = None
) -> dict[tuple[str, str], pd.DataFrame]:
    """Return (via, lang) → the translation prompts via → lang, indexed by concept, for every pair in ``wanted``."""
    return {
        (via, lang): tasks.build("translation", via, lang, tokenizer, seed=seed, words_dir=words).df.set_index(
            "concept", drop=False
        )
        for via, lang in dict.fromkeys(wanted)
    }


def concept_pool(frames: Mapping[object, pd.DataFrame]) -> list[str]:
    """Return the concepts every frame holds, sorted."""
    return sorted(set.intersection(*(set(f.index) for f in frames.values())))


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


# ---------------------------------------------------------------- settings evaluated


@dataclass(frozen=True, eq=False)
class Item:
    """One evaluated setting: its ``kind`` (vector or method name), random ``draw`` and the library's ``setting``."""

    kind: str
    draw: int
    setting: Setting

    @classmethod
    def of(cls, kind: str, draw: int, vector: SteeringVector | None, alpha: float) -> Item:
        """Return the item of ``alpha · vector`` labelled ``kind``/``draw``."""
        return cls(kind, draw, Setting(vector, alpha))

    @classmethod
    def baseline(cls, kind: str = "mean_difference") -> Item:
        """Return the unsteered setting (α = 0, no vector, no layer) labelled ``kind``."""
        return cls(kind, 0, Setting())

    @property
    def layer(self) -> int | None:
        """Return the steered layer (None: no vector)."""
        return self.setting.layer

    @property
    def alpha(self) -> float:
        """Return α."""
        return self.setting.alpha

    @property
    def vector(self) -> SteeringVector | None:
        """Return the vector (None: unsteered)."""
        return self.setting.vector

    def columns(self, kind: str = "vector") -> dict:
        """Return the setting's columns of a tidy row: ``kind`` (the column's name), draw, layer, α."""
        return {kind: self.kind, "draw": self.draw, "layer": self.layer, "alpha": self.alpha}


def controls(alpha: float, randoms: Sequence[SteeringVector], wrong: SteeringVector | None = None) -> list[Item]:
    """Return the controls at a chosen setting: each random direction (draw k) and the wrong pair, all at ``alpha``."""
    items = [Item.of("random", k, r, alpha) for k, r in enumerate(randoms)]
    if wrong is not None:
        items.append(Item.of("wrong_pair", 0, wrong, alpha))
    return items


# ---------------------------------------------------------------- batches and evaluation


class Batch:
    """Prompts of one language with their answers' token sets and words, and the prefix cache of all but their last
    token."""

    def __init__(self, model: Model, frame: pd.DataFrame, towards: pd.DataFrame, reuse_prefix: bool = True) -> None:
        self.model, self.frame = model, frame.reset_index(drop=True)
        self.target_sets = [list(towards.loc[c, "target_ids"]) for c in self.frame["concept"]]
        self.target_words = [str(towards.loc[c, "tgt_word"]) for c in self.frame["concept"]]
        self.source_sets = [list(s) for s in self.frame["target_ids"]]
        self.prefix = Prefix.of(model, self.frame["prompt"].tolist(), reuse=reuse_prefix)


def batches(
    model: Model,
    frame: pd.DataFrame,
    towards: pd.DataFrame,
    batch_size: int,
    reuse_prefix: bool = True,
    first: int = 0,
) -> list[Batch]:
    """Return the frame's batches (answering in ``frame``'s language; ``towards``: the same concepts in the target
    language); a boundary at row ``first`` so the generation rows fill whole batches."""
    first = min(max(first, 0), len(frame))
    cuts = [*range(0, first, batch_size), *range(first, len(frame), batch_size), len(frame)]
    return [Batch(model, frame.iloc[a:b], towards, reuse_prefix) for a, b in zip(cuts, cuts[1:]) if b > a]


Scorer = Callable[[Batch, Sequence[Item], str], list[pd.DataFrame]]  # (batch, items, split) → one frame per item


def evaluate(prompt_batches: Sequence[Batch], items: Sequence[Item], split: str, score: Scorer) -> pd.DataFrame:
    """Return tidy rows of every item on every batch, scored by ``score``: settings in order, then prompts."""
    per_batch = [score(b, items, split) for b in prompt_batches]
    rows = pd.concat([frames[j] for j in range(len(items)) for frames in per_batch], ignore_index=True)
    rows["layer"] = rows["layer"].astype("Int64")
    return rows


def summarize(rows: pd.DataFrame, keys: list[str], means: Mapping[str, str]) -> pd.DataFrame:
    """Return one row per setting (``keys``, in order of appearance): prompt count ``n`` and the mean of each
    ``means`` column (name → column of ``rows``)."""
    rows = rows.assign(layer=rows["layer"].astype("Int64"))
    agg = rows.groupby(keys, dropna=False, sort=False).agg(
        n=("prompt_id", "size"), **{name: (column, "mean") for name, column in means.items()}
    )
    return agg.reset_index()


def choose(summary: pd.DataFrame, groups: list[str], rank: list[str]) -> pd.DataFrame:
    """Return the best row of each group: highest ``rank`` columns in order, then the earliest layer, smallest α.

    ``summary`` holds the candidates only (e.g. the select split's steered settings).
    """
    ordered = summary.sort_values(
        [*rank, "layer", "alpha"], ascending=[False] * len(rank) + [True, True], kind="stable"
    )
    return ordered.groupby(groups, sort=False).head(1)
