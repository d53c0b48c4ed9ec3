"""Evaluating steering settings on prompt batches (pipeline): tidy per-prompt rows and greedy generations.

A batch is prompts of one language with the KV cache of all but their last token
(:class:`llmlatent.prefix.Prefix`). Every setting (vector, α) of a call runs on that one cache:
:func:`llmlatent.steering.batched.steered_final` gives the last block's output at the last prompt token for up
to ``max_rows`` rows (settings × prompts) per forward, and all rows of the call are decoded together
by :func:`llmlatent.lens.decode.decode` (streamed vocabulary slices; the next-token distribution of the
model's own final norm and head, in float32). Per prompt and setting: p(correct target answer),
p(correct source answer) and the top-1 token (its script, and whether it belongs to a correct word).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
from tqdm.auto import tqdm

from llmlatent.lens.base import of as lens_of
from llmlatent.lens.decode import decode
from llmlatent.prefix import Prefix
from llmlatent.steering.batched import generate_many, steered_final

if TYPE_CHECKING:
    from llmlatent.model import Model
    from llmlatent.steering.vector import SteeringVector

CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
SCRIPTS = {
    "zh": CJK,
    "ru": re.compile("[\u0400-\u04ff]"),
    "en": re.compile("[A-Za-z]"),
    "fr": re.compile("[A-Za-zÀ-ÿ]"),
    "de": re.compile("[A-Za-zÄÖÜäöüß]"),
}
GROUP = ["direction", "split", "vector", "draw", "layer", "alpha"]
MAX_ROWS = 256  # rows (settings × prompts) per steered forward: wide enough for the CPU's matrix units


@dataclass(frozen=True)
class Item:
    """One evaluated setting: the vector kind, its random draw, the layer (None: no vector), α and the vector."""

    kind: str
    draw: int
    layer: int | None
    alpha: float
    vector: SteeringVector | None

    @classmethod
    def baseline(cls) -> Item:
        """Return the unsteered setting (α = 0, no vector)."""
        return cls("mean_difference", 0, None, 0.0, None)

    def steering(self) -> tuple[SteeringVector | None, float]:
        """Return (vector, α) as the steered forwards take them."""
        return self.vector, self.alpha

    def columns(self) -> dict:
        """Return the setting's columns of a tidy row (vector kind, draw, layer, α)."""
        return {"vector": self.kind, "draw": self.draw, "layer": self.layer, "alpha": self.alpha}


def has_script(text: str, lang: str) -> bool:
    """Return True when ``text`` contains a character of ``lang``'s script (zh: a CJK Unified Ideograph)."""
    return bool(SCRIPTS[lang].search(text))


class Batch:
    """Prompts of one language with their answers' token sets and the prefix cache of all but their last token."""

    def __init__(self, model: Model, frame: pd.DataFrame, towards: pd.DataFrame, reuse_prefix: bool) -> None:
        self.model, self.frame = model, frame.reset_index(drop=True)
        self.target_sets = [list(towards.loc[c, "target_ids"]) for c in self.frame["concept"]]
        self.target_words = [str(towards.loc[c, "tgt_word"]) for c in self.frame["concept"]]
        self.source_sets = [list(s) for s in self.frame["target_ids"]]
        self.prefix = Prefix.of(model, self.frame["prompt"].tolist(), reuse=reuse_prefix)


def batches(
    model: Model, frame: pd.DataFrame, towards: pd.DataFrame, batch_size: int, reuse_prefix: bool, first: int = 0
) -> list[Batch]:
    """Return the frame's batches; a boundary at row ``first`` so the generation rows fill whole batches."""
    first = min(max(first, 0), len(frame))
    cuts = [*range(0, first, batch_size), *range(first, len(frame), batch_size), len(frame)]
    return [Batch(model, frame.iloc[a:b], towards, reuse_prefix) for a, b in zip(cuts, cuts[1:]) if b > a]


def metrics(batch: Batch, items: Sequence[Item], towards: str, source: str) -> list[pd.DataFrame]:
    """Return one frame of per-prompt metrics per setting in ``items``, all decoded in one call."""
    model, n = batch.model, len(batch.frame)
    finals = steered_final(model, batch.prefix, [item.steering() for item in items], max_rows=MAX_ROWS)
    stats = decode(
        lens_of(model),  # the last block's output at the last token: the lens at the last layer
        finals.reshape(len(items) * n, -1),
        {"target": batch.target_sets * len(items), "source": batch.source_sets * len(items)},
        k=1,
        energy=False,
        layers=[model.n_layers - 1] * (len(items) * n),
    )
    top = stats["top_ids"][:, 0].tolist()
    names = model.tokenizer.batch_decode([[t] for t in top])
    frames = []
    for j, item in enumerate(items):
        rows = slice(j * n, (j + 1) * n)
        ids, texts = top[rows], names[rows]
        frames.append(
            pd.DataFrame(
                {
                    "direction": f"{source}→{towards}",
                    **item.columns(),
                    "prompt_id": batch.frame["prompt_id"].to_numpy(),
                    "concept": batch.frame["concept"].to_numpy(),
                    "p_target_answer": stats["p_target"][rows].numpy(),
                    "p_source_answer": stats["p_source"][rows].numpy(),
                    "top1_token": texts,
                    "top1_cjk": [has_script(t, "zh") for t in texts],
                    "top1_target_script": [has_script(t, towards) for t in texts],
                    "top1_source_script": [has_script(t, source) for t in texts],
                    "top1_correct_target": [t in s for t, s in zip(ids, batch.target_sets)],
                    "top1_correct_source": [t in s for t, s in zip(ids, batch.source_sets)],
                }
            )
        )
    return frames


class Evaluator:
    """Runs settings over prompt batches and collects tidy rows; one progress bar for the whole sweep."""

    def __init__(self, total: int, progress: bool) -> None:
        self.parts: list[pd.DataFrame] = []
        self.bar = tqdm(total=total, desc="steering", unit="setting", disable=not progress)

    def run(self, batches: list[Batch], direction: str, split: str, items: Sequence[Item]) -> pd.DataFrame:
        """Return (and keep) the rows of each setting in ``items`` on ``batches`` (settings in order, then prompts)."""
        source, towards = direction.split("→")
        per_batch = [metrics(b, items, towards, source) for b in batches]
        new = [pd.concat([frames[j] for frames in per_batch]).assign(split=split) for j in range(len(items))]
        self.bar.update(len(items))
        self.parts.extend(new)
        return pd.concat(new, ignore_index=True)

    def rows(self) -> pd.DataFrame:
        """Return every row so far, GROUP columns first, layer as a nullable integer."""
        self.bar.close()
        rows = pd.concat(self.parts, ignore_index=True)
        rows["layer"] = rows["layer"].astype("Int64")
        return rows[GROUP + [c for c in rows.columns if c not in GROUP]]


def answer_of(text: str) -> str:
    """Return the answer word of a generation: the text before its closing quote or line end, stripped."""
    return re.split(r'["\n”»]', text, maxsplit=1)[0].strip()


def generations(
    batches: list[Batch], direction: str, items: Sequence[Item], max_new_tokens: int, n_generate: int
) -> list[pd.DataFrame]:
    """Return tidy greedy generations of the first ``n_generate`` prompts for each setting in ``items``."""
    source, towards = direction.split("→")
    out: list[list[pd.DataFrame]] = [[] for _ in items]  # per setting, then per batch (the rows' order)
    left = n_generate
    for b in batches:
        if left <= 0:
            break
        left -= len(b.frame)  # batches are cut at n_generate: whole batches only
        texts = generate_many(
            b.model,
            b.prefix,
            [item.steering() for item in items],
            max_new_tokens=max_new_tokens,
            max_rows=MAX_ROWS,
        )
        for j, (item, generated) in enumerate(zip(items, texts)):
            answers = [answer_of(t) for t in generated]
            out[j].append(
                pd.DataFrame(
                    {
                        "direction": direction,
                        "split": "test",
                        **item.columns(),
                        "prompt_id": b.frame["prompt_id"].to_numpy(),
                        "concept": b.frame["concept"].to_numpy(),
                        "generation": generated,
                        "answer": answers,
                        "expected": b.target_words,
                        "answer_target_script": [has_script(x, towards) for x in answers],
                        "answer_source_script": [has_script(x, source) for x in answers],
                        "answer_correct_target": [x == w for x, w in zip(answers, b.target_words)],
                    }
                )
            )
    return [frame for frames in out for frame in frames]
