"""Latent languages beyond English: the token set of each prompt's concept in any language, as extra set columns.

The paper measures one latent language, English (``english_ids``, ``p_english``). :func:`add_latent_sets` adds,
for every other listed language L, the column ``latent_<L>_ids``: the token set of the concept's word in L by the
paper's rule (:func:`llmlatent.tokens.token_set`, the same ``strict`` as the prompts' own sets), so that the lens
gives ``p_latent_<L>`` per layer beside p_target, p_english and p_source. Nothing else changes: the prompts, their
filters and the three paper sets stay exactly as :func:`llmlatent.tasks.build` made them.

The paper's filters drop a concept whose target and English sets intersect, so that p_english never counts the
answer. Its generalisation here is per latent language and never removes a prompt: ``overlap="mark"`` keeps every
value and counts how many concepts had a set that intersects the target's (``meta["latent_target_overlap"]``, and
the column ``latent_<L>_overlap``); ``overlap="drop"`` leaves those concepts out of that one curve (their set
becomes None, so p_latent_<L> is NaN there and the curve's mean is over the rest). A concept without a word in L
(a user's file may leave concepts out) gets None as well, counted in ``meta["latent_missing"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llmlatent.errors import DataError
from llmlatent.languages.words import read_words
from llmlatent.tasks import PromptSet
from llmlatent.tokens import LATENT_PREFIX, latent_column, token_set

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

OVERLAP = ("mark", "drop")


def _word_sets(
    concepts: list[str], lang: str, tokenizer: PreTrainedTokenizerBase, words_dir: str | Path | None, strict: bool
) -> list[list[int] | None]:
    """Return the token set of each concept's word in ``lang`` (None: no word, or an empty set)."""
    words = read_words(lang, words_dir)
    by_concept = dict(zip(words["concept"], words["word"]))
    memo: dict[str, list[int]] = {}  # one token_set per distinct word (concepts repeat across prompts)
    out = []
    for concept in concepts:
        word = by_concept.get(concept, "")
        if word and word not in memo:
            memo[word] = token_set(tokenizer, word, strict=strict)
        out.append((memo[word] or None) if word else None)
    return out


def add_latent_sets(
    prompts: PromptSet,
    latent: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    words_dir: str | Path | None = None,
    strict: bool = False,
    overlap: str = "mark",
) -> PromptSet:
    """Return ``prompts`` with a ``latent_<L>_ids`` set column for every latent language L ≠ en (English is the
    paper's ``english_ids``); ``prompts`` itself when ``latent`` is just English (the paper's sweep, unchanged)."""
    if overlap not in OVERLAP:
        raise DataError(f"latent overlap must be one of {', '.join(OVERLAP)}, not {overlap!r}")
    extra = [code for code in dict.fromkeys(latent) if code != "en"]
    if not extra:
        return prompts
    frame = prompts.df.copy()
    counts, missing = {}, {}
    targets = [set(ids) if ids is not None else set() for ids in frame["target_ids"]]
    for code in extra:
        sets = _word_sets(frame["concept"].tolist(), code, tokenizer, words_dir, strict)
        hits = [ids is not None and bool(targets[i] & set(ids)) for i, ids in enumerate(sets)]
        counts[code], missing[code] = sum(hits), sum(ids is None for ids in sets)
        if overlap == "drop":
            sets = [None if hit else ids for ids, hit in zip(sets, hits)]
        frame[latent_column(code)] = sets
        frame[f"{LATENT_PREFIX}{code}_overlap"] = hits
    meta = {**prompts.meta, "latent": list(dict.fromkeys(latent)), "latent_overlap": overlap}
    meta.update(latent_target_overlap=counts, latent_missing=missing)
    return PromptSet(frame, dict(prompts.dropped), meta, list(prompts.notes), dict(prompts.tokenizer))
