"""Tags of decoded tokens: their Unicode script, and the languages whose word token sets contain them.

Scripts come from the ``regex`` module's ``\\p{Script=…}`` classes (the Unicode Script property;
``regex`` is a dependency of transformers, so it is always installed). A token's script is the script
of its letters: characters of the Common and Inherited scripts (spaces, digits, punctuation, combining
marks) and the SentencePiece word marker ``▁`` do not count. A token whose letters come from several
scripts is tagged with all of them joined by ``+`` in alphabetical order (``Han+Hiragana``); one with no
letters is ``Common``, or ``Byte`` when it decodes to U+FFFD (a lone UTF-8 byte such as ``<0xE4>``).

Language tags follow the paper's token-set rule (:func:`llmlatent.tokens.token_set`): a token is tagged
``en`` when it starts the English word of one of the concepts in play, and so on for every language.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import regex

from llmlatent.errors import DataError
from llmlatent.languages.words import read_table
from llmlatent.tokens import token_set

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

# the scripts a token is tested for, in order; any other letter is "Other"
SCRIPTS = (
    "Latin",
    "Cyrillic",
    "Greek",
    "Han",
    "Hiragana",
    "Katakana",
    "Hangul",
    "Devanagari",
    "Bengali",
    "Tamil",
    "Arabic",
    "Hebrew",
    "Thai",
    "Armenian",
    "Georgian",
)
_PATTERNS = tuple((name, regex.compile(rf"\p{{Script={name}}}")) for name in SCRIPTS)
_NEUTRAL = regex.compile(r"[\p{Script=Common}\p{Script=Inherited}▁]")


@lru_cache(maxsize=65536)
def script(text: str) -> str:
    """Return the Unicode script of a token's letters (``Latin``, ``Han``, ``Han+Hiragana``, ``Common``, ``Byte``)."""
    found = set()
    for char in text:
        if _NEUTRAL.match(char):
            continue
        found.add(next((name for name, pattern in _PATTERNS if pattern.match(char)), "Other"))
    if found:
        return "+".join(sorted(found))
    return "Byte" if "\ufffd" in text else "Common"


def word_sets(
    tokenizer: PreTrainedTokenizerBase,
    concepts: Sequence[str],
    langs: Sequence[str],
    words_dir: str | Path | None = None,
) -> dict[str, list[int]]:
    """Return language → sorted token ids that start the word of any of ``concepts`` in that language.

    Words come from the bundled (or ``words_dir``) word files; a concept that is not in every one of them
    is refused (DataError).
    """
    table = read_table(list(langs), words_dir).set_index("concept")
    chosen = check_concepts(concepts, table)
    return {
        lang: sorted({t for c in chosen for t in token_set(tokenizer, table.at[c, f"word_{lang}"])}) for lang in langs
    }


def check_concepts(concepts: Sequence[str], table: pd.DataFrame) -> list[str]:
    """Return ``concepts`` without repeats if each is in ``table`` (indexed by concept); else one DataError line."""
    chosen = list(dict.fromkeys(concepts))
    unknown = [c for c in chosen if c not in table.index]
    if unknown:
        raise DataError(
            f"unknown concept(s) {', '.join(map(repr, unknown))}; concepts are the word files' concept column "
            f"(in every language asked for), e.g. {', '.join(table.index[:3])}"
        )
    return chosen


def concepts_in(text: str, langs: Sequence[str], words_dir: str | Path | None = None) -> list[str]:
    """Return the concepts whose word in any of ``langs`` occurs in ``text`` as a whole word (CJK: as a substring)."""
    table = read_table(list(langs), words_dir)
    found = []
    for row in table.itertuples(index=False):
        for lang in langs:
            word = str(getattr(row, f"word_{lang}"))
            if word and regex.search(rf"(?<!\p{{L}}){regex.escape(word)}(?!\p{{L}})", text):
                found.append(row.concept)
                break
            if word and script(word) in ("Han", "Hiragana", "Katakana") and word in text:
                found.append(row.concept)
                break
    return found


def lang_tags(token_ids: Iterable[int], sets: Mapping[str, Iterable[int]]) -> list[str]:
    """Return, per token id, the ``|``-joined names of the sets that contain it (``""``: none), in ``sets`` order."""
    members = {name: set(ids) for name, ids in sets.items()}
    return ["|".join(name for name, ids in members.items() if t in ids) for t in token_ids]
