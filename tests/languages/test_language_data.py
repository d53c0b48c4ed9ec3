"""Every bundled word list passes real language tools: wordfreq, lingua, the English-copy and homonym checks.

The checks run on every ``<code>.csv`` found in ``data/langs/`` (a file added later is covered too)
and compare what they flag with ``data/langs/exceptions.csv`` both ways: a flag that is not listed
fails, and so does a listed exception that no longer flags. The last tests feed wrong rows to the
check functions and see each one flagged, so the checks can fail.
"""

from __future__ import annotations

import pandas as pd
import pytest
import real_tokenizers
from language_checks import (
    CHECKS,
    DATA,
    LANGUAGE_COLUMNS,
    Flag,
    build_detector,
    bundled_codes,
    duplicate_words,
    english_copies,
    flag_all,
    layout_problems,
    rare_words,
    read_exceptions,
    read_language,
    unlisted,
    wrong_language,
)

from llmlatent.atomic import file_sha256
from llmlatent.languages.registry import registry
from llmlatent.languages.words import read_words
from llmlatent.tokens import token_set

CODES = bundled_codes()
PAPER_SHA256 = {  # the paper's five files stay byte-identical
    "en": "48ea8f0745ef0d0500c9fbb27209adb5ff5d0a3b71fac2ba4fc02b4064304b64",
    "fr": "93156051b4111d7ae531f4e24be9f27e65e0d60913bd2cec4df4c28d5b9369b3",
    "de": "9447f77df579cf007384ce7e57917c0f1ed0aaff31a11716052bd39fa98de151",
    "ru": "32d2c26e72915593a9a130adc5faf2f8a915e01b72e79e9d3a5e8f15f130f60d",
    "zh": "d93c46200c4622e4c572d446c30a1e3d7734e68eead5973b48ed29e36c2e1af2",
}
PAPER_LABELS = {  # code -> (prompt label, cloze answer label), exactly as the paper writes them
    "en": ("English", "Answer"),
    "fr": ("Français", "Réponse"),
    "de": ("Deutsch", "Antwort"),
    "ru": ("Русский", "Ответ"),
    "zh": ("中文", "答案"),
}


@pytest.fixture(scope="module")
def detector():
    """One lingua detector over all its languages for the module (its models load once, on first use)."""
    return build_detector()


@pytest.fixture(scope="module")
def flags(detector):
    """Return code → check → flags for every bundled file, computed once."""
    return {code: flag_all(code, detector) for code in CODES}


def test_bundled_files_include_the_paper_five_and_twelve_more():
    assert set(PAPER_SHA256) <= set(CODES) and len(CODES) >= 17


@pytest.mark.parametrize("code", sorted(PAPER_SHA256))
def test_paper_files_are_byte_identical(code):
    assert file_sha256(DATA / f"{code}.csv") == PAPER_SHA256[code]


@pytest.mark.parametrize("code", CODES)
def test_rows_line_up_with_english(code):
    assert layout_problems(read_language(code), read_language("en")) == []


def test_languages_csv_has_one_row_per_file_and_unique_labels():
    table = pd.read_csv(DATA / "languages.csv", dtype=str, keep_default_na=False)
    assert tuple(table.columns) == LANGUAGE_COLUMNS
    assert sorted(table["code"]) == CODES, "every bundled file needs one languages.csv row, and every row a file"
    assert table["label"].is_unique and table["answer"].str.strip().all()
    assert table["script"].str.fullmatch(r"[A-Z][a-z]{3}").all(), "script: an ISO 15924 code such as Latn"
    rows = table.set_index("code")
    assert {code: (rows.at[code, "label"], rows.at[code, "answer"]) for code in PAPER_LABELS} == PAPER_LABELS


def test_the_package_reads_every_bundled_file_with_its_labels():
    languages = registry()
    assert sorted(languages) == CODES
    table = pd.read_csv(DATA / "languages.csv", dtype=str, keep_default_na=False).set_index("code")
    for code in CODES:
        language = languages[code]
        expected = tuple(table.loc[code, ["label", "answer", "script"]])
        assert (language.label, language.answer, language.script) == expected
        words = read_words(code)
        assert len(words) == 149 and words["cloze_query"].str.endswith(f'{language.answer}: "').all()


def test_exceptions_name_bundled_rows():
    concepts = set(read_language("en")["concept"])
    for code, check in read_exceptions():
        assert code in CODES and check in CHECKS
    assert {c for listed in read_exceptions().values() for c in listed} <= concepts


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("code", CODES)
def test_check_flags_exactly_the_listed_exceptions(flags, code, check):
    new, stale = unlisted(flags[code][check], read_exceptions().get((code, check), set()))
    assert not new, (
        f"{code}: {check} flags {[(f.concept, f.word, f.detail) for f in new]}; fix the row "
        "or list it in data/langs/exceptions.csv with a reason"
    )
    assert not stale, f"{code}: {check} exceptions {stale} no longer flag; remove them from data/langs/exceptions.csv"


@pytest.mark.parametrize("name", real_tokenizers.NAMES)
def test_token_sets_are_non_empty_on_real_tokenizers(real_tokenizer, name):
    tokenizer = real_tokenizer(name)
    empty = [(code, w) for code in CODES for w in read_language(code)["word"] if not token_set(tokenizer, w)]
    assert empty == []


# --- the checks can fail ------------------------------------------------------------------------


def _frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Return a word list of (concept, word, masked sentence) rows, the filled sentence made from them."""
    return pd.DataFrame(
        [(c, w, m, m.replace("___", w)) for c, w, m in rows],
        columns=["concept", "word", "cloze_masked", "cloze_filled"],
    )


def test_a_wrong_language_sentence_is_flagged(detector):
    rows = [
        ("dog", "perro", 'Un "___" es un animal que ladra y cuida la casa.'),
        ("cat", "Katze", 'Eine "___" ist ein kleines Haustier, das schnurrt und Mäuse jagt.'),
    ]
    assert wrong_language(_frame(rows), "es", detector) == [Flag("cat", "Katze", "de")]


def test_a_rare_word_is_flagged():
    rows = [("dog", "perro", 'Un "___" ladra.'), ("platypus", "ornitorrinco", 'Un "___" pone huevos.')]
    flagged = rare_words(_frame(rows), "es")
    assert [f.concept for f in flagged] == ["platypus"] and flagged[0].detail.startswith("zipf ")


def test_an_english_copy_and_a_homonym_are_flagged():
    english = _frame([("dog", "dog", 'A "___" barks.'), ("cat", "cat", 'A "___" purrs.')])
    copied = _frame([("dog", "Dog", 'Un "___" ladra.'), ("cat", "Dog", 'Un "___" ronronea.')])
    assert english_copies(copied, english) == [Flag("dog", "Dog", "same as English")]
    assert duplicate_words(copied) == [Flag("cat", "Dog", "also dog")]


def test_misaligned_or_broken_rows_are_flagged():
    english = _frame([("dog", "dog", 'A "___" barks.'), ("cat", "cat", 'A "___" purrs.')])
    swapped = _frame([("cat", "gato", 'Un "___" ronronea.'), ("dog", "perro", 'Un "___" ladra.')])
    assert len(layout_problems(swapped, english)) == 1
    broken = _frame([("dog", "perro ", 'Un "___" ladra.'), ("cat", "gato", "Un ___ ronronea.")])
    broken.loc[0, "cloze_filled"] = 'Un "gato" ladra.'
    problems = layout_problems(broken, english)
    assert len(problems) == 3 and problems[0].startswith("dog: empty word")


def test_unlisted_and_stale_exceptions_are_told_apart():
    flagged = [Flag("dog", "perro", "zipf 2.00"), Flag("cat", "gato", "zipf 1.00")]
    assert unlisted(flagged, {"dog", "cow"}) == ([flagged[1]], ["cow"])


def test_an_exception_without_a_reason_or_with_an_unknown_check_is_refused(tmp_path):
    path = tmp_path / "exceptions.csv"
    path.write_text("code,concept,check,reason\nes,dog,zipf,  \n", encoding="utf-8")
    with pytest.raises(AssertionError, match="needs a reason"):
        read_exceptions(path)
    path.write_text("code,concept,check,reason\nes,dog,spelling,why\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="unknown check"):
        read_exceptions(path)
