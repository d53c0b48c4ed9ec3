"""Prompt builders for the paper's tasks (translation, repetition, cloze) → :class:`PromptSet`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast, overload

import numpy as np
import pandas as pd

from llmlatent import checks
from llmlatent.errors import DataError, UsageError
from llmlatent.languages.registry import PAPER, check_lang, get
from llmlatent.languages.words import MASK, read_prompt_file, read_table
from llmlatent.tokens import (
    check_ids,
    check_tokenizer_object,
    token_set,
    tokenizer_identity,
    vocab_sha256,
    word_warning,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TASKS = ("translation", "repetition", "cloze")
# the token-set columns of a PromptSet frame, by the name of the probability they give (p_<name>)
DROP_REASONS = (
    "empty_word",
    "empty_prompt",
    "english_in_target",
    "empty_target_set",
    "empty_english_set",
    "target_english_overlap",
    "source_english_overlap",
    "no_cloze_mask",
)


@dataclass
class PromptSet:
    """Prompts with their answer / English / source token-id sets, and what the filters dropped.

    ``df`` columns: prompt_id, task, src, tgt, concept, src_word, tgt_word, en_word, prompt,
    target_ids, english_ids, source_ids (None where p_source is undefined). ``tokenizer`` is the identity
    of the tokenizer that made the sets (``sha256`` of its vocabulary, ``size``, ``name``; empty when
    unknown), checked by :func:`check_tokenizer`. Negative or non-integer token ids are refused.
    """

    df: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tokenizer: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_ids(self.df)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def prompts(self) -> list[str]:
        """Return the prompt texts in order."""
        return self.df["prompt"].tolist()

    def report(self) -> str:
        """Return a one-line summary: kept count and drops per reason."""
        drops = ", ".join(f"{k}={v}" for k, v in self.dropped.items() if v) or "none"
        task = f"{self.meta.get('task')} {self.meta.get('src')}→{self.meta.get('tgt')}"
        return f"{len(self)} prompts kept ({task}); dropped: {drops}"


def check_tokenizer(prompts: PromptSet, tokenizer: PreTrainedTokenizerBase) -> None:
    """Return None if the prompt set's token sets were made with ``tokenizer`` (same vocabulary); else DataError.

    A PromptSet built by :mod:`llmlatent.tasks` remembers its tokenizer's vocabulary sha256; a set without
    that identity (``PromptSet(frame)``) is checked for ids in the tokenizer's range only. A duck-typed
    tokenizer without vocabulary (benchmarks) or length gets the checks it allows.
    """
    made_with = prompts.tokenizer or {}
    has_vocab = callable(getattr(tokenizer, "get_vocab", None))
    if made_with.get("sha256") and has_vocab and made_with["sha256"] != vocab_sha256(tokenizer):
        ours = tokenizer_identity(tokenizer)
        raise DataError(
            f"the prompt set's token sets were made with another tokenizer ({made_with.get('name') or 'unnamed'}, "
            f"{made_with.get('size')} tokens, vocabulary sha256 {made_with['sha256'][:12]}…) than the model's "
            f"({ours['name'] or 'unnamed'}, {ours['size']} tokens, {ours['sha256'][:12]}…); build the prompt set "
            "again with model.tokenizer"
        )
    check_ids(prompts.df, len(tokenizer) if hasattr(tokenizer, "__len__") else None)


def check_prompts(prompts: object, where: str) -> PromptSet:
    """Return ``prompts`` if it is a :class:`PromptSet`; else raise a one-line UsageError naming ``where``.

    The library's functions take prompts as a PromptSet only (its frame, meta and tokenizer identity together);
    a DataFrame with the PromptSet columns becomes one with ``PromptSet(frame)``.
    """
    if isinstance(prompts, PromptSet):
        return prompts
    hint = ": wrap the frame as llmlatent.PromptSet(frame)" if isinstance(prompts, pd.DataFrame) else ""
    raise UsageError(f"{where} takes a PromptSet (tasks.build, tasks.custom …), got a {type(prompts).__name__}{hint}")


def _line(labels: tuple[str, str], src_word: str, tgt_word: str | None) -> str:
    head = f'{labels[0]}: "{src_word}" - {labels[1]}: "'
    return head if tgt_word is None else f'{head}{tgt_word}"\n'


def _shots(rng: np.random.Generator, n_rows: int, query: int, k: int) -> list[int]:
    # every row but the query; np.delete gives the same int64 values as the plain list comprehension
    # ([i for i in range(n_rows) if i != query]), so rng.choice draws exactly the same rows
    pool = np.delete(np.arange(n_rows), query)
    return [int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)]


def _task_source(task: str, src: str, tgt: str, words_dir: str | Path | None = None) -> str:
    """Return the source language of ``task`` (cloze: ``tgt``) after checking the task and both languages."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    check_lang(tgt, words_dir)
    if task == "cloze":
        src = tgt
    check_lang(src, words_dir)
    if task == "translation" and src == tgt:
        raise DataError(
            f"translation needs two different languages (got {src}→{tgt}); use task='repetition' for src = tgt"
        )
    if task == "repetition" and src != tgt:
        raise DataError(f"repetition uses one language (got {src}→{tgt}); use task='translation' or pass src = tgt")
    return src


def _drop_reason(
    task: str,
    tgt: str,
    col: dict[str, list],
    i: int,
    target_ids: list[int],
    english_ids: list[int],
    source_ids: list[int] | None,
    *,
    cognate_filter: bool,
) -> str | None:
    """Return why table row ``i`` is filtered out (a DROP_REASONS key), or None when it is kept."""
    en_word, tgt_word = col["word_en"][i], col[f"word_{tgt}"][i]
    if task == "cloze" and col[f"cloze_{tgt}"][i].count(MASK) != 1:
        return "no_cloze_mask"
    if task != "cloze" and tgt != "en" and en_word.lower() in tgt_word.lower():
        # the paper's Translation notebook (also repetition); Cloze.ipynb has no such filter
        return "english_in_target"
    if not target_ids:
        return "empty_target_set"
    if not english_ids:
        return "empty_english_set"
    if tgt != "en" and set(target_ids) & set(english_ids):
        return "target_english_overlap"
    # cognate_filter is passed only together with with_source, so source_ids is a list here
    if cognate_filter and set(cast("list[int]", source_ids)) & set(english_ids):
        return "source_english_overlap"
    return None


def _kept(
    task: str,
    src: str,
    tgt: str,
    col: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    dropped: dict[str, int],
    *,
    strict: bool,
    cognate_filter: bool,
) -> list[tuple[int, list[int], list[int], list[int] | None]]:
    """Return (row, target ids, English ids, source ids) of the table rows that pass the filters; count the rest."""
    with_source = task == "translation" and src not in ("en", tgt)
    keep = []
    for i in range(len(col["word_en"])):
        target_ids = token_set(tokenizer, col[f"word_{tgt}"][i], strict=strict)
        english_ids = token_set(tokenizer, col["word_en"][i], strict=strict)
        source_ids = token_set(tokenizer, col[f"word_{src}"][i], strict=strict) if with_source else None
        ids = (target_ids, english_ids, source_ids)
        reason = _drop_reason(task, tgt, col, i, *ids, cognate_filter=cognate_filter and with_source)
        if reason:
            dropped[reason] += 1
            continue
        keep.append((i, *ids))
    return keep


def _choose(rng: np.random.Generator, keep: list, n: int | None) -> tuple[list, list[str]]:
    """Return (``n`` of the kept rows drawn with ``rng``, in table order, or all of them; notes on a shortfall)."""
    notes = []
    if n is not None and n < len(keep):
        chosen = sorted(rng.choice(len(keep), size=n, replace=False).tolist())
        keep = [keep[j] for j in chosen]
    elif n is not None and n > len(keep):
        notes.append(f"asked for n={n} prompts but only {len(keep)} pass the filters; using all {len(keep)}")
        log.warning(notes[-1])
    return keep, notes


def _prompt_text(
    task: str, langs: tuple[str, str], labels: tuple[str, str], col: dict[str, list], i: int, shots: list[int]
) -> str:
    """Return the prompt of table row ``i`` with the example rows ``shots``."""
    if task == "cloze":
        # examples: filled lines of other concepts; query: the masked line cut where the answer starts
        examples = col[f"cloze_example_{langs[1]}"]
        return "".join(f"{examples[j]}\n" for j in shots) + col[f"cloze_query_{langs[1]}"][i]
    src_words, tgt_words = col[f"word_{langs[0]}"], col[f"word_{langs[1]}"]
    text = "".join(_line(labels, src_words[j], tgt_words[j]) for j in shots)
    return text + _line(labels, src_words[i], None)


def build(
    task: str,
    src: str,
    tgt: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    n: int | None = None,
    seed: int = 0,
    words_dir: str | Path | None = None,
    strict: bool = False,
    cognate_filter: bool = False,
    n_shots: int | None = None,
) -> PromptSet:
    """Return the :class:`PromptSet` of a task with the paper's filters applied.

    translation: ``n_shots`` (default 4) examples ``Français: "fleur" - 中文: "花"`` then the query
    ending at ``中文: "``; repetition: the same with src = tgt; cloze (in language ``tgt``; ``src``
    is ignored): ``n_shots`` (default 2) filled sentences of other words then the masked query ending
    where the answer starts. Filters (drop counts in ``.dropped``): the English word inside the
    target word, an empty target or English token set, overlapping target/English sets (target ≠
    en); with ``cognate_filter`` also source/English overlaps. The same ``seed`` gives the same
    prompts byte for byte.
    """
    n, src = checks.count(n, "n", optional=True), _task_source(task, src, tgt, words_dir)
    check_tokenizer_object(tokenizer, f"tasks.build({task!r})")
    n_shots = (2 if task == "cloze" else 4) if n_shots is None else n_shots
    table = read_table(["en", src, tgt], words_dir)
    labels = (get(src, words_dir).label, get(tgt, words_dir).label)  # the prompts' language labels
    if task == "cloze" and not all(table[f"cloze_query_{tgt}"]):
        get(tgt, words_dir).answer_label()  # raises: a bundled-layout file of a language without an answer label
    rng = np.random.default_rng(seed)
    dropped = dict.fromkeys(DROP_REASONS, 0)
    dropped["empty_word"] = int(table.attrs.get("empty_word", 0))
    # plain lists of the table's columns, read once: the table has a RangeIndex, so row label = list position,
    # and a list lookup returns the same str as table.loc (per-cell pandas indexing was the main cost of a set)
    col = {name: table[name].tolist() for name in table.columns}
    keep = _kept(task, src, tgt, col, tokenizer, dropped, strict=strict, cognate_filter=cognate_filter)
    if not keep:
        raise DataError(
            f"all {len(table) + dropped['empty_word']} concepts were filtered out for {task} {src}→{tgt}: {dropped}"
        )
    keep, notes = _choose(rng, keep, n)
    records = [
        {
            "prompt_id": pid,
            "task": task,
            "src": src,
            "tgt": tgt,
            "concept": col["concept"][i],
            "src_word": col[f"word_{src}"][i],
            "tgt_word": col[f"word_{tgt}"][i],
            "en_word": col["word_en"][i],
            "prompt": _prompt_text(task, (src, tgt), labels, col, i, _shots(rng, len(table), i, n_shots)),  # in order
            "target_ids": target_ids,
            "english_ids": english_ids,
            "source_ids": source_ids,
        }
        for pid, (i, target_ids, english_ids, source_ids) in enumerate(keep)
    ]
    meta = {"task": task, "src": src, "tgt": tgt, "seed": seed, "strict": strict, "cognate_filter": cognate_filter}
    meta.update(n_requested=n, n_concepts=len(table) + dropped["empty_word"], n_shots=n_shots)
    return PromptSet(pd.DataFrame(records), dropped, meta, notes, tokenizer_identity(tokenizer))


def _word_notes(
    tokenizer: PreTrainedTokenizerBase, words: dict[str, str | None], sets: dict[str, list[int] | None]
) -> list[str]:
    """Return the warnings of one custom prompt: words measured poorly, a target set equal to the English one."""
    # a set is None only for an empty word, for which word_warning returns None before it reads the set
    notes = [
        f"tasks.custom: {role} {warning}"
        for role, word in words.items()
        if word is not None and (warning := word_warning(tokenizer, word, cast("list[int]", sets[role])))
    ]
    if sets["target"] and sets["english"] and set(sets["target"]) == set(sets["english"]):  # "" has no set
        # the target and English words are always given (strings); only the source word may be None
        target, english = cast(str, words["target"]), cast(str, words["english"])
        notes.append(
            f"tasks.custom: target word {target.strip()!r} and English word {english.strip()!r} "
            "have the same token set, so p_target = p_english for that prompt (expected for an English answer; "
            "otherwise the two curves cannot be told apart)"
        )
    return notes


def _custom_records(
    tokenizer: PreTrainedTokenizerBase, rows: Iterable[tuple], *, strict: bool, own_first_token: bool
) -> tuple[list[dict], dict[str, int], list[str]]:
    """Return (records, drop counts, warnings) of :func:`custom`'s (prompt, target, English, source word) rows."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    records: list[dict] = []
    notes: list[str] = []
    for prompt, tgt_word, en_word, src_word in rows:
        if not prompt.strip():
            dropped["empty_prompt"] += 1
            continue
        words = {"target": tgt_word, "english": en_word, "source": src_word or None}
        sets = {
            role: token_set(tokenizer, word, strict=strict, own_first_token=own_first_token) if word else None
            for role, word in words.items()
        }
        notes += _word_notes(tokenizer, words, sets)
        if not sets["target"] or not sets["english"]:
            dropped["empty_target_set" if not sets["target"] else "empty_english_set"] += 1
            continue
        records.append(
            {
                "prompt_id": len(records),
                "task": "custom",
                "src": "",
                "tgt": "",
                "concept": en_word.strip(),
                "src_word": (src_word or "").strip(),
                "tgt_word": tgt_word.strip(),
                "en_word": en_word.strip(),
                "prompt": prompt,
                "target_ids": sets["target"],
                "english_ids": sets["english"],
                "source_ids": sets["source"] or None,
            }
        )
    return records, dropped, notes


@overload
def _as_list(value: str | list[str], name: str) -> list[str]: ...
@overload
def _as_list(value: None, name: str) -> None: ...
def _as_list(value: str | list[str] | None, name: str) -> list[str] | None:
    """Return one string or a list of strings as a list (None stays None); DataError for other items."""
    if value is None:
        return None
    value = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in value):
        raise DataError(f"tasks.custom: {name} must be strings")
    return value


def _word_columns(prompts: list[str], **words: str | list[str] | None) -> dict[str, list[str]]:
    """Return name → word list (one per prompt; None entries left out) after checking the lengths agree."""
    columns = {name: _as_list(value, name) for name, value in words.items() if value is not None}
    for name, values in columns.items():
        if len(values) != len(prompts):
            raise DataError(f"tasks.custom: {len(prompts)} prompts but {len(values)} {name}; give one word per prompt")
    if not prompts:
        raise DataError("tasks.custom: no prompts given")
    return columns


def custom(
    prompts: str | list[str],
    target_words: str | list[str],
    english_words: str | list[str],
    source_words: str | list[str] | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase,
    strict: bool = False,
    own_first_token: bool = False,
) -> PromptSet:
    """Return a :class:`PromptSet` of hand-written prompts, each with its answer and English word.

    One word per prompt (a single string is one prompt). The token sets follow the paper's rule
    (:func:`llmlatent.tokens.token_set`); ``source_words`` adds p_source. Prompts that are empty
    or whitespace only, and words whose token set is empty, are dropped and counted in ``.dropped``.
    Lists of different lengths raise a DataError. Warnings (logged, and kept in ``.notes``): a word
    with no token, or whose set has no token longer than one character (:func:`llmlatent.tokens.word_warning`),
    and a target set equal to the English set (p_target = p_english; kept: it is right for English answers).
    """
    check_tokenizer_object(tokenizer, "tasks.custom")
    prompts = _as_list(prompts, "prompts")
    columns = _word_columns(prompts, target_words=target_words, english_words=english_words, source_words=source_words)
    sources: Sequence[str | None] = columns.get("source_words") or [None] * len(prompts)
    rows = zip(prompts, columns["target_words"], columns["english_words"], sources)
    records, dropped, notes = _custom_records(tokenizer, rows, strict=strict, own_first_token=own_first_token)
    if not records:
        raise DataError(f"all {len(prompts)} prompts were filtered out: {dropped}")
    notes = list(dict.fromkeys(notes))
    for note in notes:
        log.warning(note)
    meta = {"task": "custom", "src": "", "tgt": "", "strict": strict, "own_first_token": own_first_token}
    return PromptSet(pd.DataFrame(records), dropped, meta, notes, tokenizer_identity(tokenizer))


def from_prompt_file(
    path: str | Path, tokenizer: PreTrainedTokenizerBase, *, strict: bool = False, n: int | None = None, seed: int = 0
) -> PromptSet:
    """Return a :class:`PromptSet` replaying a saved prompt dataset in the seed repository's layout.

    Token sets come from ``out_token_str`` (target), ``latent_token_str`` (English) and the optional
    ``in_token_str`` (source), recomputed for ``tokenizer``; token-id columns in the file are ignored.
    Empty prompt rows are counted in ``dropped["empty_prompt"]``.
    """
    n = checks.count(n, "n", optional=True)
    frame = read_prompt_file(path)
    empty = int(frame.attrs.get("empty_prompt", 0))
    if frame.empty:
        raise DataError(f"all {empty} prompts in {path} are empty")
    if n is not None and n < len(frame):
        frame = frame.iloc[sorted(np.random.default_rng(seed).choice(len(frame), size=n, replace=False).tolist())]
    sources = frame["in_token_str"].tolist() if "in_token_str" in frame.columns else None
    try:
        ps = custom(
            frame["prompt"].tolist(),
            frame["out_token_str"].tolist(),
            frame["latent_token_str"].tolist(),
            sources,
            tokenizer=tokenizer,
            strict=strict,
        )
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    ps.dropped["empty_prompt"] += empty
    ps.meta.update({"seed": seed, "source_file": Path(path).name})
    return ps


def all_pairs() -> list[tuple[str, str]]:
    """Return every (src, tgt) translation pair among the paper's five languages."""
    return [(s, t) for s in PAPER for t in PAPER if s != t]
