"""Scoring steering settings on a batch of prompts: what the steered model outputs, and in which language.

Every scorer takes a :class:`~.core.Batch`, the :class:`~.core.Item` settings and the split, and returns one tidy frame
per item (:data:`.core.Scorer`). All items run on the batch's one prefix KV cache, tiled (up to ``MAX_ROWS`` rows,
settings × prompts, per forward). The output language is judged by one
:class:`~llmlatent.languages.scripts.OutputJudge`:

* :class:`NextToken` (the demo's grid and controls): the last block's output at the last prompt token
  (:func:`llmlatent.steering.batched.steered_final`), decoded in float32 by the lens
  (:func:`llmlatent.lens.decode.decode`): p(correct target / source answer), and the top-1 token, judged by its
  **script** (a single token is too short for a language identifier) and by membership of the correct word's
  token set;
* :class:`Greedy` (the benchmark): greedy answers and their first step
  (:func:`llmlatent.steering.batched.generate_scored`): ``forced`` is the **language** verdict (the concept's target
  token set first, lingua among the languages in play otherwise), ``concept_kept`` the first token in the target
  word's set, and p of both words' sets from the step's softmax;
* :func:`generations` (the demo's examples): greedy answers of the first test prompts, judged by script.

The two next-token measurements are kept apart on purpose: they are different forwards (the lens' float32 decode
of the last block vs the model's own logits inside ``generate``), and each experiment's numbers stay as published.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from llmlatent.experiments.steering.core import Batch, Item
from llmlatent.languages.scripts import OutputJudge, in_scripts
from llmlatent.lens.base import of as lens_of
from llmlatent.lens.decode import decode
from llmlatent.steering.batched import generate_many, generate_scored, steered_final

MAX_ROWS = 256  # rows (settings × prompts) per steered forward: wide enough for the CPU's matrix units
HAN = ("Han",)  # the demo's ``top1_cjk`` column: any Han character (its historic name, kept in the CSV)


def answer_of(text: str) -> str:
    """Return the answer word of a generation: the text before its closing quote or line end, stripped."""
    return re.split(r'["\n”»]', text, maxsplit=1)[0].strip()


def settings(items: Sequence[Item]) -> list:
    """Return the library settings of ``items``, in order."""
    return [item.setting for item in items]


@dataclass
class NextToken:
    """The demo's scorer: next-token probabilities of both answers and the top-1 token's script, per prompt."""

    judge: OutputJudge
    source: str
    target: str

    def __call__(self, batch: Batch, items: Sequence[Item], split: str) -> list[pd.DataFrame]:
        """Return one frame of per-prompt metrics per item, all decoded in one call."""
        model, n = batch.model, len(batch.frame)
        finals = steered_final(model, batch.prefix, settings(items), max_rows=MAX_ROWS)
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
        judge, frames = self.judge, []
        for j, item in enumerate(items):
            rows = slice(j * n, (j + 1) * n)
            ids, texts = top[rows], names[rows]
            frames.append(
                pd.DataFrame(
                    {
                        "direction": f"{self.source}→{self.target}",
                        "split": split,
                        **item.columns(),
                        "prompt_id": batch.frame["prompt_id"].to_numpy(),
                        "concept": batch.frame["concept"].to_numpy(),
                        "p_target_answer": stats["p_target"][rows].numpy(),
                        "p_source_answer": stats["p_source"][rows].numpy(),
                        "top1_token": texts,
                        "top1_cjk": [in_scripts(t, HAN) for t in texts],
                        "top1_target_script": [judge.in_script(t, self.target) for t in texts],
                        "top1_source_script": [judge.in_script(t, self.source) for t in texts],
                        "top1_correct_target": [t in s for t, s in zip(ids, batch.target_sets)],
                        "top1_correct_source": [t in s for t, s in zip(ids, batch.source_sets)],
                    }
                )
            )
        return frames


@dataclass
class Greedy:
    """The benchmark's scorer: greedy answers judged by language, the concept kept, both answers' probabilities."""

    judge: OutputJudge
    source: str
    target: str
    max_new_tokens: int

    def __call__(self, batch: Batch, items: Sequence[Item], split: str) -> list[pd.DataFrame]:
        """Return one frame of per-prompt rows per item (generated and scored in one tiled call)."""
        tok, judge = batch.model.tokenizer, self.judge
        t_sets, s_sets = batch.target_sets, batch.source_sets
        scored = generate_scored(
            batch.model,
            batch.prefix,
            settings(items),
            {"target": t_sets, "source": s_sets},
            max_new_tokens=self.max_new_tokens,
            max_rows=MAX_ROWS,
        )
        frames = []
        for j, item in enumerate(items):
            top = scored.top1[j].tolist()
            kept = [t in set(ts) for t, ts in zip(top, t_sets)]
            answers = [answer_of(x) for x in scored.texts[j]]
            frames.append(
                pd.DataFrame(
                    {
                        "source": self.source,
                        "target": self.target,
                        "split": split,
                        **item.columns("method"),
                        "prompt_id": batch.frame["prompt_id"].to_numpy(),
                        "concept": batch.frame["concept"].to_numpy(),
                        "p_target": scored.p["target"][j].numpy(),
                        "p_source": scored.p["source"][j].numpy(),
                        "top1_token": tok.batch_decode([[t] for t in top]),
                        "concept_kept": kept,
                        "source_top1": [t in set(ss) for t, ss in zip(top, s_sets)],
                        "answer": answers,
                        "detected": [judge.detect(x) for x in answers],
                        "forced": [judge.in_language(x, self.target, k) for x, k in zip(answers, kept)],
                    }
                )
            )
        return frames


def generations(
    prompt_batches: list[Batch],
    judge: OutputJudge,
    direction: str,
    items: Sequence[Item],
    max_new_tokens: int,
    n_generate: int,
) -> list[pd.DataFrame]:
    """Return tidy greedy generations of the first ``n_generate`` prompts for each item, judged by script."""
    source, towards = direction.split("→")
    out: list[list[pd.DataFrame]] = [[] for _ in items]  # per setting, then per batch (the rows' order)
    left = n_generate
    for b in prompt_batches:
        if left <= 0:
            break
        left -= len(b.frame)  # batches are cut at n_generate: whole batches only
        texts = generate_many(b.model, b.prefix, settings(items), max_new_tokens=max_new_tokens, max_rows=MAX_ROWS)
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
                        "answer_target_script": [judge.in_script(x, towards) for x in answers],
                        "answer_source_script": [judge.in_script(x, source) for x in answers],
                        "answer_correct_target": [x == w for x, w in zip(answers, b.target_words)],
                    }
                )
            )
    return [frame for frames in out for frame in frames]
