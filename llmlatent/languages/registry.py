"""Languages as data: a BCP-47 code, the label the prompts use, the cloze answer label, the script, the words file.

A language is available when its words file exists: ``<code>.csv`` (bundled layout) or ``<code>/clean.csv``
(the paper's layout) in the bundled folder ``data/langs`` (``$LLMLATENT_DATA`` overrides it) or in a user's
``--words`` folder, which is looked at first, so a user adds a language by dropping ``xx.csv`` there and
overrides a bundled one by dropping a file of the same name.

Labels and answer labels come from a ``languages.csv`` (``code,label,answer[,script]``) in the user's folder,
then from the bundled ``languages.csv`` (which holds the paper's five labels exactly: ``Français``,
``Deutsch``, ``Русский``, ``English``, ``中文``), else the label defaults to the language's autonym from
``langcodes`` (first letter capitalised, as the paper writes its labels) and the script to the one
``langcodes`` infers. A cloze prompt needs an answer label; a language without one gets a DataError saying
which row to add. Codes must be valid BCP-47 language tags (``langcodes``); anything else is one DataError.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llmlatent.errors import DataError

PAPER = ("en", "fr", "de", "ru", "zh")  # the paper's five languages, in its order
META_FILE = "languages.csv"
META_COLUMNS = ("code", "label", "answer")
NOT_LANGUAGES = frozenset({"languages", "exceptions"})  # csv files of the words folder that are not word lists


@dataclass(frozen=True)
class Language:
    """One language: ``code`` (BCP-47), prompt ``label``, cloze ``answer`` label ('' if unknown), ISO 15924
    ``script``, and the ``path`` of its words file."""

    code: str
    label: str
    answer: str
    script: str
    path: Path

    def answer_label(self) -> str:
        """Return the cloze answer label, or raise a DataError naming the row to add."""
        if not self.answer:
            raise DataError(
                f"no cloze answer label for {self.code!r} ({self.path}); add a row "
                f"'{self.code},{self.label},<the word for Answer>' to {self.path.parent / META_FILE}"
            )
        return self.answer


def words_dir() -> Path:
    """Return the bundled word-list folder (``$LLMLATENT_DATA`` overrides it)."""
    env = os.environ.get("LLMLATENT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data" / "langs"


def valid_code(code: str) -> bool:
    """Return whether ``code`` is a valid BCP-47 language tag whose language subtag is registered."""
    import langcodes

    try:
        return bool(code) and code == code.strip() and langcodes.Language.get(code).is_valid()
    except (ValueError, LookupError):  # langcodes raises LanguageTagError (a ValueError) on malformed tags
        return False


def _word_files(folder: Path) -> dict[str, Path]:
    """Return code → words file of every language in ``folder`` (``<code>.csv`` before ``<code>/clean.csv``)."""
    if not folder.is_dir():
        return {}
    found = {p.parent.name: p for p in folder.glob("*/clean.csv")}
    found.update({p.stem: p for p in folder.glob("*.csv") if p.stem not in NOT_LANGUAGES})
    return {code: path for code, path in sorted(found.items()) if valid_code(code)}


def _read_meta(path: Path) -> dict[str, dict[str, str]]:
    """Return code → {label, answer, script} of a ``languages.csv`` (empty when there is none)."""
    if not path.exists():
        return {}
    return dict(_read_meta_cached(str(path), path.stat().st_mtime_ns, path.stat().st_size))


@lru_cache(maxsize=16)
def _read_meta_cached(path: str, _mtime: int, _size: int) -> tuple[tuple[str, dict[str, str]], ...]:
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"{path}: not a UTF-8 CSV file ({exc}); save it as UTF-8 with columns code,label,answer"
        ) from None
    missing = [c for c in META_COLUMNS if rows and c not in rows[0]]
    if missing or not rows:
        raise DataError(f"{path}: needs the columns code,label,answer[,script] and one row per language")
    meta = {}
    for line, row in enumerate(rows, start=2):
        code, label = (row.get("code") or "").strip(), (row.get("label") or "").strip()
        if not code or not label:
            raise DataError(f"{path}: line {line} needs a code and a label (got {code!r}, {label!r})")
        if code in meta:
            raise DataError(f"{path}: language {code!r} appears twice (line {line}); keep one row per language")
        meta[code] = {"label": label, "answer": (row.get("answer") or "").strip(), "script": row.get("script") or ""}
    return tuple(meta.items())


def _autonym(code: str) -> tuple[str, str]:
    """Return (the language's name in itself with its first letter capitalised, its likely script)."""
    import langcodes

    tag = langcodes.Language.get(code)
    name = tag.autonym()
    return name[:1].upper() + name[1:], tag.maximize().script or ""


def registry(directory: str | Path | None = None) -> dict[str, Language]:
    """Return code → :class:`Language` of every available language: the paper's five first, then by code.

    ``directory`` (a user's ``--words`` folder) is looked at before the bundled folder.
    """
    bundled = words_dir()
    folders = [Path(directory)] if directory is not None else []
    if folders and not folders[0].is_dir():
        raise DataError(f"word folder {folders[0]} does not exist or is not a folder")
    files = _word_files(bundled)
    meta = _read_meta(bundled / META_FILE)
    for folder in folders:
        files.update(_word_files(folder))
        meta.update(_read_meta(folder / META_FILE))
    order = [c for c in PAPER if c in files] + sorted(c for c in files if c not in PAPER)
    out = {}
    for code in order:
        row = meta.get(code)
        label, script = (row["label"], row["script"]) if row else _autonym(code)
        out[code] = Language(code, label, row["answer"] if row else "", script or _autonym(code)[1], files[code])
    return out


def codes(directory: str | Path | None = None) -> tuple[str, ...]:
    """Return the codes of every available language (the paper's five first)."""
    return tuple(registry(directory))


def get(code: str, directory: str | Path | None = None) -> Language:
    """Return the :class:`Language` of ``code``, or raise a DataError listing the available codes."""
    return registry(directory)[check_lang(code, directory)]


def check_lang(code: str, directory: str | Path | None = None) -> str:
    """Return ``code`` if a words file exists for it, else raise one DataError saying what to do."""
    available = registry(directory)
    if code in available:
        return code
    where = f"{directory} or the bundled folder" if directory is not None else "the bundled folder"
    invalid = "" if valid_code(str(code)) else " (not a valid BCP-47 language code)"
    raise DataError(
        f"unknown language {code!r}{invalid}; available: {', '.join(available)} "
        f"(add {code}.csv to a --words folder; looked in {where})"
    )


def split_codes(value: str | Sequence[str]) -> tuple[str, ...]:
    """Return the language codes of ``value`` ('en,fr' or a sequence) as a tuple, unchecked (see ``parse_codes``)."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return tuple(part.strip() for item in items for part in str(item).split(",") if part.strip())


def parse_codes(
    value: str | Sequence[str], directory: str | Path | None = None, *, flag: str, at_least: int = 1
) -> tuple[str, ...]:
    """Return the language codes of ``value`` ('en,fr' or a sequence), each checked; refuse duplicates and too few."""
    parts = split_codes(value)
    repeated = sorted({c for c in parts if parts.count(c) > 1})
    if repeated:
        raise DataError(f"{flag} lists {', '.join(repeated)} more than once; give each language once")
    if len(parts) < at_least:
        raise DataError(f"{flag} needs at least {at_least} language(s), got {len(parts)}: e.g. {flag} en,fr,zh")
    return tuple(check_lang(code, directory) for code in parts)


def label(code: str, directory: str | Path | None = None) -> str:
    """Return the prompt label of ``code`` (e.g. ``Français``), or the code itself when it is not available."""
    language = registry(directory).get(code)
    return language.label if language else code
