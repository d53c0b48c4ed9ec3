"""Tags of decoded tokens: their Unicode script, and the languages whose word token sets contain them.

Scripts come from the ``regex`` module's ``\\p{Script=…}`` classes (the Unicode Script property;
``regex`` is a dependency of transformers, so it is always installed). A token's script is the script
of its letters: characters of the Common and Inherited scripts (spaces, digits, punctuation, combining
marks) and the SentencePiece word marker ``▁`` do not count. A token whose letters come from several
scripts is tagged with all of them joined by ``+`` in alphabetical order (``Han+Hiragana``); one with no
letters is ``Common``, or ``Byte`` when it decodes to U+FFFD (a lone UTF-8 byte such as ``<0xE4>``).

Language tags follow the paper's token-set rule (:func:`llmlatent.tokens.token_set`): a token is tagged
``en`` when it starts the English word of one of the concepts in play, and so on for every language.

**The output-language judge** (:class:`OutputJudge`, :func:`in_script`, :func:`script_of_language`) is the one
place that says whether decoded output is written in a language. A language's script comes from the registry's
ISO 15924 code (:attr:`llmlatent.languages.registry.Language.script`), mapped to Unicode Script property values
(``Cyrl`` → ``Cyrillic``; the names from fontTools' copy of the Unicode data, a matplotlib dependency); ISO codes
that stand for several scripts or a variant of one are expanded as ISO 15924 defines them (``Jpan`` → Han +
Hiragana + Katakana, ``Kore`` → Hangul + Han, ``Hans``/``Hant`` → Han, ``Latf`` → Latin …). It gives two
verdicts, and says which one a number is:

- **script** (:meth:`OutputJudge.in_script`): the text holds a letter of the language's script. It is what a
  single token can show (a word piece is too short for a language identifier), so the steering demo scores
  its top-1 tokens and greedy answers with it. Languages that share a script cannot be told apart this way:
  for a Latin-script target among other Latin-script languages (es beside fr and en) the share counts all
  of them. :meth:`OutputJudge.shared_with` names those languages, and the demo records them
  (``target_script_shared_with``); the number stays a script share, never relabelled a language share.
- **language** (:meth:`OutputJudge.in_language`): for a generation of a few words, the concept's own token set
  first (the paper's rule), then lingua restricted to the languages in play
  (:class:`llmlatent.languages.identify.LanguageId`); the steering benchmark's forcing uses it. This is the
  verdict that tells same-script languages apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import regex

from llmlatent.errors import DataError
from llmlatent.languages.registry import get as get_language
from llmlatent.languages.words import read_table
from llmlatent.tokens import token_set

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

    from llmlatent.languages.identify import LanguageId

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


# ---------------------------------------------------------------- the output-language judge

# ISO 15924 codes that name several Unicode scripts, or a variant of one: their definition in ISO 15924
ISO_COMBINED = {
    "Jpan": ("Hani", "Hira", "Kana"),
    "Kore": ("Hang", "Hani"),
    "Hrkt": ("Hira", "Kana"),
    "Hanb": ("Hani", "Bopo"),
    "Hans": ("Hani",),
    "Hant": ("Hani",),
    "Latf": ("Latn",),
    "Latg": ("Latn",),
    "Cyrs": ("Cyrl",),
    "Aran": ("Arab",),
    "Syre": ("Syrc",),
    "Syrj": ("Syrc",),
    "Syrn": ("Syrc",),
    "Geok": ("Geor",),
}
NOT_A_SCRIPT = frozenset({"Common", "Inherited", "Unknown"})  # Zyyy, Zinh, Zzzz: no letters of a language


@lru_cache(maxsize=256)
def unicode_scripts(iso: str) -> tuple[str, ...]:
    """Return the Unicode script names an ISO 15924 code stands for (``Cyrl`` → ``("Cyrillic",)``, ``Jpan`` → Han,
    Hiragana, Katakana), sorted; a code that names no script of letters raises one DataError."""
    from fontTools.unicodedata import script_name

    code = str(iso).strip().title()
    names = tuple(sorted({script_name(part, default=None) or "" for part in ISO_COMBINED.get(code, (code,))}))
    if not code or "" in names or set(names) & NOT_A_SCRIPT:
        raise DataError(
            f"{iso!r} is not an ISO 15924 code of a script with letters (e.g. Latn, Cyrl, Hans, Jpan, Arab); "
            "fix the script column of languages.csv"
        )
    return names


def script_of_language(code: str, words_dir: str | Path | None = None) -> str:
    """Return the Unicode script(s) a language is written in, as :func:`script` names them (``Cyrillic``,
    ``Han+Hiragana+Katakana`` for ja), from the registry's ISO 15924 code; one DataError when there is none."""
    return "+".join(_language_scripts(code, words_dir))


@lru_cache(maxsize=256)
def _language_scripts(code: str, words_dir: str | Path | None = None) -> tuple[str, ...]:
    """Return the Unicode scripts of language ``code`` (resolved once per process and words folder)."""
    language = get_language(code, words_dir)
    if not language.script:
        raise DataError(
            f"no script known for language {code!r}; add its ISO 15924 code (e.g. Latn) in a script column of "
            f"{language.path.parent / 'languages.csv'}"
        )
    return unicode_scripts(language.script)


@lru_cache(maxsize=256)
def _letters(names: tuple[str, ...]) -> regex.Pattern:
    """Return the pattern of one character of any of the Unicode scripts ``names``."""
    return regex.compile("|".join(rf"\p{{Script={name}}}" for name in names))


def in_scripts(text: str, names: Sequence[str]) -> bool:
    """Return True when ``text`` holds a letter of any of the Unicode scripts ``names`` (e.g. ``("Han",)``)."""
    return bool(_letters(tuple(names)).search(text))


def in_script(text: str, code: str, words_dir: str | Path | None = None) -> bool:
    """Return True when ``text`` holds a letter of language ``code``'s script (see :class:`OutputJudge`)."""
    return in_scripts(text, _language_scripts(code, words_dir))


class OutputJudge:
    """Says whether decoded output (a token, a greedy answer) is written in a language, among ``langs`` in play.

    ``in_script`` is the script verdict, ``in_language`` the language verdict (the module's docstring says when
    each is used and why a shared script cannot tell languages apart). Every language's script is resolved when
    the judge is built, so an unknown one fails before any model work.
    """

    def __init__(self, langs: Sequence[str], words_dir: str | Path | None = None) -> None:
        self.langs = tuple(dict.fromkeys(str(x) for x in langs))
        self.words_dir = words_dir
        self.scripts = {lang: _language_scripts(lang, words_dir) for lang in self.langs}
        self._lid: LanguageId | None = None

    def _scripts(self, lang: str) -> tuple[str, ...]:
        if lang not in self.scripts:
            self.scripts[lang] = _language_scripts(lang, self.words_dir)
        return self.scripts[lang]

    def in_script(self, text: str, lang: str) -> bool:
        """Return True when ``text`` holds a letter of ``lang``'s script (any of them: ja is Han, kana)."""
        return in_scripts(text, self._scripts(lang))

    def shared_with(self, lang: str) -> tuple[str, ...]:
        """Return the other languages in play written in one of ``lang``'s scripts: those its script share counts."""
        own = set(self._scripts(lang))
        return tuple(x for x in self.langs if x != lang and own & set(self._scripts(x)))

    def detect(self, text: str) -> str | None:
        """Return lingua's language of ``text`` among ``langs`` (None: no letters); lingua is built on first use."""
        return self.identifier.detect(text)

    @property
    def identifier(self) -> LanguageId:
        """Return the lingua identifier restricted to ``langs``."""
        if self._lid is None:
            from llmlatent.languages.identify import LanguageId

            self._lid = LanguageId(self.langs)
        return self._lid

    def in_language(self, text: str, lang: str, in_target_set: bool = False) -> bool:
        """Return True when ``text`` counts as written in ``lang``: the concept's token set first (``in_target_set``:
        the first generated token starts the concept's word in ``lang``), otherwise lingua among ``langs``."""
        return self.identifier.forced(text, lang, in_target_set)
