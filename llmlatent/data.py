"""Word lists: the bundled en/fr/de/ru/zh data, display names, and the seed repository's CSV layouts.

Bundled layout (``data/langs/<lang>.csv``, one row per concept, same concepts in every file):

========== =================================================================
column     meaning
========== =================================================================
concept    the English word; the key that joins the languages
word       the word in this language (single word; Chinese mostly 1-2 characters)
cloze_masked  a sentence in this language describing the concept, the word replaced by ``___``
cloze_filled  the same sentence with the word in place
========== =================================================================

The seed repository's layout (one file per language, columns ``lang, word_original,
word_translation, blank_prompt_translation_masked``) is read too; any token-id columns in such files
are ignored and recomputed for the model in use.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
from .errors import LlmlatentError

LANGS = ("en", "fr", "de", "ru", "zh")
DISPLAY = {"en": "English", "fr": "Français", "de": "Deutsch", "ru": "Русский", "zh": "中文"}
ANSWER = {"en": "Answer", "fr": "Réponse", "de": "Antwort", "ru": "Ответ", "zh": "答案"}
MASK = "___"
COLUMNS = ("concept", "word", "cloze_masked", "cloze_filled")
SEED_COLUMNS = ("lang", "word_original", "word_translation", "blank_prompt_translation_masked")
SEED_PROMPT_COLUMNS = ("prompt", "out_token_str", "latent_token_str")


class DataError(LlmlatentError, ValueError):
    """Bad word data or an unknown language; the message says what is wrong."""


def words_dir() -> Path:
    """Return the bundled word-list folder (``$LLMLATENT_DATA`` overrides it)."""
    env = os.environ.get("LLMLATENT_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data" / "langs"


def check_lang(lang: str, available: tuple[str, ...] = LANGS) -> str:
    """Return ``lang`` if it is available, else raise a DataError listing the available codes."""
    if lang not in available:
        raise DataError(f"unknown language {lang!r}; available: {', '.join(available)}")
    return lang


def _missing(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(columns)})")


def _normalise_mask(text: str) -> str:
    return re.sub(r"_{2,}|(?<![\w])_(?![\w])", MASK, str(text))


def read_words(lang: str, directory: str | Path | None = None) -> pd.DataFrame:
    """Return the word list of one language: columns concept, word, cloze_masked, cloze_filled.

    ``directory`` holds ``<lang>.csv`` (or ``<lang>/clean.csv``) in the bundled layout or in the
    seed repository's layout; defaults to the bundled data.
    """
    check_lang(lang)
    folder = Path(directory) if directory is not None else words_dir()
    candidates = [folder / f"{lang}.csv", folder / lang / "clean.csv"]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        raise DataError(f"no word list for {lang!r} in {folder} (looked for {lang}.csv and {lang}/clean.csv)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "word_original" in frame.columns or "word_translation" in frame.columns:
        _missing(frame, SEED_COLUMNS, path)
        frame = pd.DataFrame(
            {
                "concept": frame["word_original"].str.strip(),
                "word": frame["word_translation"].str.strip(),
                "cloze_masked": frame["blank_prompt_translation_masked"].map(_normalise_mask),
            }
        )
        frame["cloze_filled"] = [m.replace(MASK, w) for m, w in zip(frame["cloze_masked"], frame["word"])]
    else:
        _missing(frame, COLUMNS, path)
        frame = frame[list(COLUMNS)].copy()
    frame = frame[(frame["concept"] != "") & (frame["word"] != "")]
    return frame.drop_duplicates("concept").reset_index(drop=True)


def read_table(langs: list[str], directory: str | Path | None = None) -> pd.DataFrame:
    """Return one row per concept present in every language: concept, word_<lang>, cloze_<lang>."""
    table: pd.DataFrame | None = None
    for lang in dict.fromkeys(langs):
        words = read_words(lang, directory).rename(columns={"word": f"word_{lang}", "cloze_masked": f"cloze_{lang}"})
        words = words[["concept", f"word_{lang}", f"cloze_{lang}"]]
        table = words if table is None else table.merge(words, on="concept", how="inner")
    return table.reset_index(drop=True)


def read_prompt_file(path: str | Path) -> pd.DataFrame:
    """Return a saved prompt dataset in the seed layout: prompt, out_token_str, latent_token_str[, in_token_str]."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"prompt file {path} does not exist")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    _missing(frame, SEED_PROMPT_COLUMNS, path)
    keep = [c for c in (*SEED_PROMPT_COLUMNS, "in_token_str") if c in frame.columns]
    frame = frame[keep]
    return frame[frame["prompt"].str.strip() != ""].reset_index(drop=True)
