"""Quality checks of the bundled word lists with real language tools (wordfreq, lingua), for the tests and the README.

Every ``<code>.csv`` in ``data/langs/`` (the bundled layout: ``concept,word,cloze_masked,cloze_filled``)
is checked; ``languages.csv`` (one row a language) and ``exceptions.csv`` (the kept exceptions) are
the two data files of the folder that are not word lists. Each check returns what it flags, so the
tests can compare it with the listed exceptions both ways (a flag not listed fails, and so does a
listed exception that no longer flags: the list stays short and true).

Checks (``CHECKS``):

========= =====================================================================================
zipf      the word's ``wordfreq.zipf_frequency(word, code)`` is below ``ZIPF_MIN`` (3.0: about
          once per million words)
lingua    ``lingua`` does not identify the filled cloze sentence as the file's language
loanword  the word equals the English word (case-insensitive); ``en.csv`` itself is not checked
duplicate the word is already the word of an earlier concept of the same file (a homonym)
========= =====================================================================================

Run ``python tests/language_checks.py`` for the table of the README's "Bundled languages" section.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from llmlatent.languages.registry import NOT_LANGUAGES
from llmlatent.languages.words import COLUMNS, MASK, read_csv

DATA = Path(__file__).resolve().parent.parent / "data" / "langs"
LANGUAGE_COLUMNS = ("code", "label", "answer", "script")
EXCEPTION_COLUMNS = ("code", "concept", "check", "reason")
CHECKS = ("zipf", "lingua", "loanword", "duplicate")
ZIPF_MIN = 3.0


@dataclass(frozen=True)
class Flag:
    """One flagged row: the concept, the word, and what the check saw (a Zipf value, a detected language …)."""

    concept: str
    word: str
    detail: str


def bundled_codes(folder: Path = DATA) -> list[str]:
    """Return the language codes of every word list in ``folder`` (``<code>.csv``), sorted."""
    return sorted(p.stem for p in folder.glob("*.csv") if p.stem not in NOT_LANGUAGES)


def read_language(code: str, folder: Path = DATA) -> pd.DataFrame:
    """Return the word list ``<code>.csv`` of ``folder`` with the bundled layout's columns (strings)."""
    frame = read_csv(folder / f"{code}.csv", "word list")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise AssertionError(f"{code}.csv: missing column(s) {', '.join(missing)}")
    return frame[list(COLUMNS)]


def read_exceptions(path: Path = DATA / "exceptions.csv") -> dict[tuple[str, str], set[str]]:
    """Return the listed exceptions as (code, check) → concepts; every row needs a known check and a reason."""
    frame = read_csv(path, "exceptions file")
    assert list(frame.columns) == list(EXCEPTION_COLUMNS), f"{path}: columns must be {','.join(EXCEPTION_COLUMNS)}"
    listed: dict[tuple[str, str], set[str]] = {}
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        assert row.check in CHECKS, f"{path}:{line}: unknown check {row.check!r}; use one of {', '.join(CHECKS)}"
        assert row.reason.strip(), f"{path}:{line}: an exception needs a reason"
        concepts = listed.setdefault((row.code, row.check), set())
        assert row.concept not in concepts, f"{path}:{line}: {row.code} {row.concept} {row.check} listed twice"
        concepts.add(row.concept)
    return listed


def rare_words(frame: pd.DataFrame, code: str, threshold: float = ZIPF_MIN) -> list[Flag]:
    """Return the rows whose word has a wordfreq Zipf frequency below ``threshold`` in language ``code``."""
    from wordfreq import zipf_frequency

    flags = []
    for concept, word in zip(frame["concept"], frame["word"]):
        zipf = zipf_frequency(word, code)
        if zipf < threshold:
            flags.append(Flag(concept, word, f"zipf {zipf:.2f}"))
    return flags


def lingua_language(code: str):
    """Return lingua's ``Language`` of an ISO 639-1 code, or raise an AssertionError saying lingua lacks it."""
    from lingua import IsoCode639_1, Language

    iso = getattr(IsoCode639_1, code.upper(), None)
    assert iso is not None, f"lingua has no language {code!r}: list its sentences as lingua exceptions"
    return Language.from_iso_code_639_1(iso)


def build_detector():
    """Return a lingua detector over every language lingua supports (models load lazily, on first use)."""
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().build()


def wrong_language(frame: pd.DataFrame, code: str, detector) -> list[Flag]:
    """Return the rows whose filled cloze sentence ``detector`` does not identify as language ``code``."""
    want = lingua_language(code)
    found = detector.detect_languages_in_parallel_of(list(frame["cloze_filled"]))
    return [
        Flag(concept, word, "none" if got is None else got.iso_code_639_1.name.lower())
        for concept, word, got in zip(frame["concept"], frame["word"], found)
        if got != want
    ]


def english_copies(frame: pd.DataFrame, english: pd.DataFrame) -> list[Flag]:
    """Return the rows whose word equals the English word of the same concept (case-insensitive)."""
    en = dict(zip(english["concept"], english["word"].str.casefold()))
    return [
        Flag(concept, word, "same as English")
        for concept, word in zip(frame["concept"], frame["word"])
        if en.get(concept) == word.casefold()
    ]


def duplicate_words(frame: pd.DataFrame) -> list[Flag]:
    """Return the rows whose word already is the word of an earlier concept of the same file."""
    first: dict[str, str] = {}
    flags = []
    for concept, word in zip(frame["concept"], frame["word"]):
        if word in first:
            flags.append(Flag(concept, word, f"also {first[word]}"))
        first.setdefault(word, concept)
    return flags


def layout_problems(frame: pd.DataFrame, english: pd.DataFrame) -> list[str]:
    """Return what is wrong with a file's rows: concepts not en.csv's (in order), empty words, bad cloze pairs."""
    problems = []
    if list(frame["concept"]) != list(english["concept"]):
        extra = sorted(set(frame["concept"]) - set(english["concept"]))
        lost = sorted(set(english["concept"]) - set(frame["concept"]))
        problems.append(f"concepts differ from en.csv (not in en: {extra[:5]}, missing: {lost[:5]}, or order)")
    for row in frame.itertuples(index=False):
        if not row.word.strip() or row.word != row.word.strip():
            problems.append(f"{row.concept}: empty word or surrounding spaces {row.word!r}")
        if row.cloze_masked.count(f'"{MASK}"') != 1:
            problems.append(f'{row.concept}: cloze_masked needs "{MASK}" (in quotes) exactly once')
        elif row.cloze_masked.replace(MASK, row.word) != row.cloze_filled:
            problems.append(f"{row.concept}: cloze_filled is not cloze_masked with the word in place")
    return problems


def flag_all(code: str, detector, folder: Path = DATA) -> dict[str, list[Flag]]:
    """Return every check's flags for the word list ``code`` of ``folder`` (check → flags)."""
    frame = read_language(code, folder)
    english = read_language("en", folder)
    return {
        "zipf": rare_words(frame, code),
        "lingua": wrong_language(frame, code, detector),
        "loanword": [] if code == "en" else english_copies(frame, english),
        "duplicate": duplicate_words(frame),
    }


def unlisted(flags: list[Flag], listed: set[str]) -> tuple[list[Flag], list[str]]:
    """Return (the flags whose concept is not listed as an exception, the listed concepts that no longer flag)."""
    flagged = {f.concept for f in flags}
    return [f for f in flags if f.concept not in listed], sorted(listed - flagged)


def table(folder: Path = DATA) -> str:
    """Return the README's language table (code, label, script, words, Zipf and lingua pass rates, exceptions)."""
    languages = read_csv(folder / "languages.csv", "language table").set_index("code")
    listed = read_exceptions(folder / "exceptions.csv")
    detector = build_detector()
    lines = [
        "| code | label | script | words | Zipf ≥ 3 | lingua | exceptions |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for code in bundled_codes(folder):
        flags = flag_all(code, detector, folder)
        words = len(read_language(code, folder))
        rate = {check: f"{100 * (words - len(flags[check])) / words:.1f}%" for check in ("zipf", "lingua")}
        kept = sum(len(v) for (c, _), v in listed.items() if c == code)
        row = languages.loc[code]
        lines.append(
            f"| {code} | {row['label']} | {row['script']} | {words} | {rate['zipf']} | {rate['lingua']} | {kept} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    start = time.perf_counter()
    sys.stdout.write(table() + f"\n\n({time.perf_counter() - start:.1f} s)\n")
