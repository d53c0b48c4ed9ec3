"""Word lists: the bundled word files (languages: :mod:`llmlatent.languages.registry`) and the seed repository's layout.

Bundled layout (``data/langs/<lang>.csv``, one row per concept, same concepts in every file):

========== =================================================================
column     meaning
========== =================================================================
concept    the English word; the key that joins the languages
word       the word in this language (single word; Chinese mostly 1-2 characters)
cloze_masked  a sentence in this language describing the concept, the word replaced by ``___``
cloze_filled  the same sentence with the word in place
========== =================================================================

The seed repository's layout (the paper's ``data/langs/<lang>/clean.csv``; columns ``lang,
word_original, word_translation, blank_prompt_original, blank_prompt_translation,
blank_prompt_translation_masked``, of which the first three and the last are required) is read too:
``word_original`` is the English concept, ``word_translation`` the word, and
``blank_prompt_translation_masked`` a masked sentence that already ends with the answer label and
the quoted answer (``Eine "___" ist … schwebt. Antwort: "Wolke".``). As in the paper's Cloze
notebook, that full line is a few-shot example, and the query is the line cut at the label's colon
(full-width ``：`` for Chinese) followed by ``: "``. Other columns (token ids, ``error``) are ignored;
token sets are recomputed for the model in use.

Reading is strict: a folder, an empty file, a header without rows, non-UTF-8 text, or a concept on
two rows with different content raise a :class:`DataError` naming the file (and lines). Empty or
whitespace-only words never reach a prompt; the builders count them as dropped (``empty_word``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from llmlatent.atomic import file_sha256
from llmlatent.errors import DataError
from llmlatent.languages.registry import get

log = logging.getLogger(__name__)

MASK = "___"
COLUMNS = ("concept", "word", "cloze_masked", "cloze_filled")
SEED_COLUMNS = ("lang", "word_original", "word_translation", "blank_prompt_translation_masked")
SEED_PROMPT_COLUMNS = ("prompt", "out_token_str", "latent_token_str")


def _missing(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(columns)})")


def _normalise_mask(text: str) -> str:
    return re.sub(r"_{2,}|(?<![\w])_(?![\w])", MASK, str(text))


def read_csv(path: str | Path, what: str = "CSV file") -> pd.DataFrame:
    """Return a CSV file as strings (UTF-8, with or without BOM, any line ends), or raise one clear DataError.

    The message names the file: a folder, a missing file, an empty file, a file with a header but
    no rows, text that is not UTF-8 (save it as UTF-8), or text that is not CSV.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; give the path of a .csv file")
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02X} at position {exc.start}); save it as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; it needs a header row and at least one data row") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a valid CSV file ({str(exc).strip().splitlines()[-1]})") from None
    if frame.empty:
        raise DataError(f"{path}: a header but no data rows")
    return frame


def _seed_cloze(lang: str, masked: str) -> tuple[str, str]:
    """Return (the sentence before the answer label, the query) of a seed-layout masked cloze line.

    The paper's files already end with the label and the quoted answer (``… Antwort: "Wolke".``);
    the paper cuts the query at the label's colon (``masked.split(":")[0] + ': "'``; full-width
    ``：`` for Chinese, falling back to ``:`` if a Chinese line has none).
    """
    sep = "：" if lang == "zh" and "：" in masked else ":"
    head = masked.split(sep)[0]
    return head, head + ': "'


def _check_duplicates(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Return ``frame`` with exact duplicate rows of a concept collapsed; raise for conflicting ones."""
    named = frame[frame["concept"] != ""]
    repeated = named[named["concept"].duplicated(keep=False)]
    for concept, rows in repeated.groupby("concept", sort=False):
        lines = ", ".join(str(i + 2) for i in rows.index)  # line 1 is the header
        if rows["word"].nunique() > 1 or rows["cloze_example"].nunique() > 1:
            words = ", ".join(repr(w) for w in rows["word"])
            raise DataError(
                f"{path}: concept {concept!r} appears on lines {lines} with different rows ({words}); "
                "keep one row per concept"
            )
        log.warning("%s: concept %r repeated on lines %s (identical rows); using it once", path, concept, lines)
    return frame[~((frame["concept"] != "") & frame["concept"].duplicated())]


def word_file(lang: str, directory: str | Path | None = None) -> Path:
    """Return the word list of ``lang``: ``<lang>.csv`` or ``<lang>/clean.csv`` in ``directory``, else bundled."""
    return get(lang, directory).path


def read_words(lang: str, directory: str | Path | None = None) -> pd.DataFrame:
    """Return the word list of one language: concept, word, cloze_masked, cloze_filled, cloze_example, cloze_query.

    ``directory`` holds ``<lang>.csv`` (or ``<lang>/clean.csv``) in the bundled layout or in the
    seed repository's layout; defaults to the bundled data. ``cloze_example`` is a filled few-shot
    line, ``cloze_query`` the masked line cut where the answer starts. Words and concepts are
    stripped; rows whose word or concept is empty stay in the frame with ``word == ""`` (or
    ``concept == ""``) so that the prompt builders count them as dropped. A concept on several
    rows with different content raises a DataError naming the lines.
    A duplicate-row warning is logged on the first read of a file's content only.
    """
    language = get(lang, directory)
    path = language.path
    # parsed word lists are kept in memory keyed on the sha256 of the file's bytes (not its name or time
    # stamp), so an edited file is always parsed again; each call gets its own copy of the frame
    key = (lang, str(path.resolve()), _sha256(path), language.answer)
    if key in _WORDS:
        return _WORDS[key].copy()
    frame = _read_words(lang, path, language.answer)
    if key[2] is not None and _sha256(path) == key[2]:  # kept only if the file did not change while parsed
        if len(_WORDS) >= 64:
            _WORDS.clear()
        _WORDS[key] = frame.copy()
    return frame


_WORDS: dict[tuple[str, str, str | None, str], pd.DataFrame] = {}  # read_words' memory: (lang, file, sha256, answer)


def _sha256(path: Path) -> str | None:
    """Return the sha256 of a file's bytes, or None if it cannot be read (read_csv then says why)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def _read_words(lang: str, path: Path, answer: str) -> pd.DataFrame:
    """Return :func:`read_words` of ``path`` (parsed, not memoised); ``answer`` is the cloze answer label ('' if
    the language has none: its cloze columns are then empty, and a cloze build says which row to add)."""
    frame = read_csv(path, "word list")
    if "word_original" in frame.columns or "word_translation" in frame.columns:
        _missing(frame, SEED_COLUMNS, path)
        masked = frame["blank_prompt_translation_masked"].str.strip()
        cut = [_seed_cloze(lang, m) for m in masked]
        frame = pd.DataFrame(
            {
                "concept": frame["word_original"].str.strip(),
                "word": frame["word_translation"].str.strip(),
                "cloze_masked": [_normalise_mask(head) for head, _ in cut],
                "cloze_example": masked,
                "cloze_query": [query for _, query in cut],
            }
        )
    else:
        _missing(frame, COLUMNS, path)
        frame = frame[list(COLUMNS[:3])].copy()
        frame["concept"], frame["word"] = frame["concept"].str.strip(), frame["word"].str.strip()
        head = [f'{m} {answer}: "' if answer else "" for m in frame["cloze_masked"]]
        frame["cloze_example"] = [f'{h}{w}".' if h else "" for h, w in zip(head, frame["word"])]
        frame["cloze_query"] = head
    frame["cloze_filled"] = [m.replace(MASK, w) for m, w in zip(frame["cloze_masked"], frame["word"])]
    frame = _check_duplicates(frame, path)
    columns = ["concept", "word", "cloze_masked", "cloze_filled", "cloze_example", "cloze_query"]
    return frame[columns].reset_index(drop=True)


def read_table(langs: list[str], directory: str | Path | None = None) -> pd.DataFrame:
    """Return one row per concept present in every language: concept, word_/cloze_/cloze_example_/cloze_query_<lang>.

    Concepts with an empty (or whitespace-only) word in any language, and rows without a concept,
    are left out and counted in ``table.attrs["empty_word"]``.
    """
    table: pd.DataFrame | None = None
    empty: set[str] = set()
    unnamed = 0
    english = _concepts("en", directory)
    for lang in dict.fromkeys(langs):
        words = read_words(lang, directory)
        _check_aligned(lang, words, english, directory)
        unnamed += int((words["concept"] == "").sum())
        words = words[words["concept"] != ""]
        empty |= set(words.loc[words["word"] == "", "concept"])
        words = words.rename(
            columns={
                "word": f"word_{lang}",
                "cloze_masked": f"cloze_{lang}",
                "cloze_example": f"cloze_example_{lang}",
                "cloze_query": f"cloze_query_{lang}",
            }
        )
        words = words[["concept", f"word_{lang}", f"cloze_{lang}", f"cloze_example_{lang}", f"cloze_query_{lang}"]]
        table = words if table is None else table.merge(words, on="concept", how="inner")
    if table is None:
        raise DataError("read_table needs at least one language")
    present = set(table["concept"])
    table = table[~table["concept"].isin(empty)].reset_index(drop=True)
    table.attrs["empty_word"] = len(empty & present) + unnamed
    return table


def _concepts(lang: str, directory: str | Path | None) -> set[str]:
    """Return the named concepts of a language's words file."""
    words = read_words(lang, directory)
    return set(words.loc[words["concept"] != "", "concept"])


def _check_aligned(lang: str, words: pd.DataFrame, english: set[str], directory: str | Path | None) -> None:
    """Raise a DataError when a words file names concepts that the English file lacks (concepts are keyed by the
    English word: a file may leave concepts out, never add or rename them)."""
    extra = sorted(set(words.loc[words["concept"] != "", "concept"]) - english)
    if extra:
        path, en_path = get(lang, directory).path, get("en", directory).path
        shown = ", ".join(repr(c) for c in extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise DataError(
            f"{path}: concept(s) {shown} are not in the English file {en_path}; the concept column must hold the "
            "English words of the same concepts (fix the spelling, or add the concept to the English file)"
        )


def check_prompt_file(path: str | Path) -> Path:
    """Return ``path`` if it names an existing file, else raise a DataError saying what it is instead."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"--prompts {path} is a folder; give the path of a prompt .csv file")
    if not path.exists():
        raise DataError(f"prompt file {path} does not exist")
    return path


def read_prompt_file(path: str | Path) -> pd.DataFrame:
    """Return a saved prompt dataset in the seed layout: prompt, out_token_str, latent_token_str[, in_token_str].

    Rows whose prompt is empty or whitespace only are left out and counted in
    ``frame.attrs["empty_prompt"]`` (empty answer words give empty token sets, counted by the builder).
    Exact repeats of a row are used once, with a warning naming the data rows (counted in
    ``frame.attrs["duplicate_prompt"]``); a NUL byte in any used column raises a DataError naming the row.
    """
    path = check_prompt_file(path)
    frame = read_csv(path, "prompt file")
    _missing(frame, SEED_PROMPT_COLUMNS, path)
    keep = [c for c in (*SEED_PROMPT_COLUMNS, "in_token_str") if c in frame.columns]
    frame = frame[keep]
    for column in keep:
        nul = frame.index[frame[column].str.contains("\x00", regex=False)]
        if len(nul):
            raise DataError(
                f"{path}: data row {nul[0] + 1} has a NUL byte in its {column} (data rows counted from 1 after the "
                "header); remove it"
            )
    empty = frame["prompt"].str.strip() == ""
    frame = frame[~empty]
    repeats = frame.duplicated(keep="first")
    for _, rows in frame[frame.duplicated(keep=False)].groupby(keep, sort=False):
        log.warning(
            "%s: data rows %s are the same prompt row; using it once", path, ", ".join(str(i + 1) for i in rows.index)
        )
    frame = frame[~repeats].reset_index(drop=True)
    frame.attrs["empty_prompt"] = int(empty.sum())
    frame.attrs["duplicate_prompt"] = int(repeats.sum())
    return frame
