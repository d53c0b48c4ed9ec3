"""The output-language judge: every language's script from its ISO 15924 code, the script and language verdicts, and
its agreement with the five-language regex table it replaced on the strings the steering demo judges."""

from __future__ import annotations

import re

import pytest

from llmlatent.errors import DataError
from llmlatent.languages.registry import codes, registry
from llmlatent.languages.scripts import OutputJudge, in_script, script_of_language, unicode_scripts
from llmlatent.languages.words import read_words

# the regex table the steering demo used before the judge (evaluate.has_script), kept here as the reference
LEGACY = {
    "zh": re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]"),
    "ru": re.compile("[\u0400-\u04ff]"),
    "en": re.compile("[A-Za-z]"),
    "fr": re.compile("[A-Za-zÀ-ÿ]"),
    "de": re.compile("[A-Za-zÄÖÜäöüß]"),
}


def test_every_bundled_language_gets_its_script_from_the_registry():
    expected = {
        "en": "Latin",
        "es": "Latin",
        "vi": "Latin",
        "tr": "Latin",
        "ru": "Cyrillic",
        "uk": "Cyrillic",
        "zh": "Han",
        "ja": "Han+Hiragana+Katakana",
        "ko": "Hangul",
        "hi": "Devanagari",
        "ar": "Arabic",
    }
    bundled = codes()
    assert len(bundled) >= 17
    for code in bundled:
        assert script_of_language(code), code  # every bundled language has a script (no DataError)
    for code, script in expected.items():
        assert script_of_language(code) == script, code
    # derived from ISO 15924 generally (fontTools' Unicode data), not from a table of the bundled languages
    assert unicode_scripts("Grek") == ("Greek",) and unicode_scripts("Hebr") == ("Hebrew",)
    assert unicode_scripts("Thai") == ("Thai",) and unicode_scripts("Geor") == ("Georgian",)
    assert unicode_scripts("Kore") == ("Han", "Hangul") and unicode_scripts("hant") == ("Han",)
    for bad in ("Zyyy", "Qqqq", ""):
        with pytest.raises(DataError, match="ISO 15924"):
            unicode_scripts(bad)


def test_each_language_s_own_words_are_in_its_script_and_not_in_other_scripts():
    langs = registry()
    scripts = {code: script_of_language(code) for code in langs}
    for code in langs:
        words = [w for w in read_words(code)["word"] if w]
        own = sum(in_script(w, code) for w in words) / len(words)
        assert own >= 0.97, (code, own)
        for other in langs:
            if set(scripts[other].split("+")) & set(scripts[code].split("+")):
                continue  # a shared script (es and fr, ja and zh): the script cannot tell them apart
            assert not any(in_script(w, other) for w in words), (code, other)
    judge = OutputJudge(["ja", "ko", "ar", "hi", "zh", "uk"])
    cases = {"ja": ["ありがとう", "カメラ", "日本"], "ko": ["구름"], "ar": ["سحابة"], "hi": ["बादल"], "uk": ["хмара"]}
    for lang, texts in cases.items():
        for text in texts:
            assert judge.in_script(text, lang), (lang, text)
    assert judge.in_script("日本", "zh") and not judge.in_script("ありがとう", "zh")  # kana is Japanese only
    assert not judge.in_script("cloud", "ja") and not judge.in_script("▁", "ko") and not judge.in_script("", "ar")


def test_latin_script_languages_share_a_script_the_language_verdict_tells_them_apart():
    """Documented: the script verdict of a shared script counts every language written in it; the judge names them,
    and the language verdict (token set first, then lingua among the languages in play) tells them apart."""
    judge = OutputJudge(["es", "fr", "en", "ja"])
    assert judge.shared_with("es") == ("fr", "en") and judge.shared_with("ja") == ()
    assert judge.in_script("the house", "es") and judge.in_script("la casa", "fr")  # script only: both True
    assert judge.in_language("la casa está cerca del río", "es")
    assert not judge.in_language("the house is near the river", "es")
    assert judge.in_language("hotel", "es", in_target_set=True)  # a same-script cognate: the token set decides
    assert judge.detect("la maison est près de la rivière") == "fr" and judge.detect("123") is None


def test_unknown_script_is_one_data_error(tmp_path):
    (tmp_path / "eo.csv").write_text("concept,word,cloze_masked,cloze_filled\ncloud,a,b ___,b a\n", encoding="utf-8")
    (tmp_path / "languages.csv").write_text("code,label,answer,script\neo,Esperanto,Respondo,Zyyy\n", encoding="utf-8")
    with pytest.raises(DataError, match="not an ISO 15924 code of a script with letters"):
        OutputJudge(["en", "eo"], tmp_path)


def test_judge_agrees_with_the_old_regex_table_on_the_real_vocabulary(spm_tokenizer):
    """On every token of the embedded model's real vocabulary (Gemma 3), the judge and the five-language regex table
    give the same verdict for zh and ru except on tokens whose only letters the old ranges missed (々, 〇, CJK
    radicals, Cyrillic Supplement); en, fr and de differ only on non-ASCII Latin letters (é, ş, ư …) the old
    character classes left out (en, de) or punctuation they let in (× ÷ in fr's À-ÿ)."""
    import regex

    texts = spm_tokenizer.batch_decode([[t] for t in range(len(spm_tokenizer))])
    missed = {
        "zh": regex.compile(r"\p{Script=Han}"),
        "ru": regex.compile(r"\p{Script=Cyrillic}"),
    }
    for lang in ("zh", "ru"):
        differ = [t for t in texts if bool(LEGACY[lang].search(t)) != in_script(t, lang)]
        for text in differ:  # the judge says yes, the old table said no, and only for letters outside its ranges
            assert in_script(text, lang) and not LEGACY[lang].search(text), text
            assert all(not missed[lang].match(c) or not LEGACY[lang].match(c) for c in text), text
        assert len(differ) <= (40 if lang == "zh" else 5), (lang, differ)
    latin = regex.compile(r"\p{Script=Latin}")
    for lang in ("en", "fr", "de"):
        for text in (t for t in texts if bool(LEGACY[lang].search(t)) != in_script(t, lang)):
            new = in_script(text, lang)
            extra = [c for c in text if latin.match(c) and not LEGACY[lang].match(c)]
            assert (new and extra) or (not new and set(re.findall("[×÷]", text))), (lang, text)
    # every word the steering demo's prompts answer with (bundled zh, ru, en, fr, de) gets the same verdict
    for lang in LEGACY:
        for other in LEGACY:
            words = [w for w in read_words(other)["word"] if w]
            assert [bool(LEGACY[lang].search(w)) for w in words] == [in_script(w, lang) for w in words] or {
                lang,
                other,
            } <= {"en", "fr", "de"}, (lang, other)
