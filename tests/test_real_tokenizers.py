"""The paper's token-set rule on five real tokenizers (Llama-2, Mistral, Gemma 3, Llama-3, Qwen3), all bundled words."""

from __future__ import annotations

import pytest
import real_tokenizers

from llmlatent.languages import registry as languages
from llmlatent.languages import words as data
from llmlatent.tokens import token_set, vocab_info


@pytest.fixture(scope="module")
def bundled_words() -> dict[str, list[str]]:
    return {lang: data.read_words(lang)["word"].tolist() for lang in languages.PAPER}


def own_first_token(tok, word: str) -> int:
    """The first token of the word's own encoding after dropping a bare word-start marker."""
    ids = tok.encode(word, add_special_tokens=False)
    marker = vocab_info(tok).marker
    if tok.convert_ids_to_tokens(ids[0]) in (marker, "Ġ", "▁"):
        ids = ids[1:]
    return ids[0]


def test_llama2_rebuild_reproduces_the_reference_encodings(real_tokenizer):
    tok = real_tokenizer("llama2")
    source = (real_tokenizers.package_dir("llama2") / "llama-tokenizer.js").read_text(encoding="utf-8")
    cases = real_tokenizers.reference_encodings(source)
    assert len(cases) >= 10 and any(text == "镇" for text, _ in cases)
    real_tokenizers.check_llama2(tok, cases)  # the cached, reloaded copy too
    assert len(tok) == 32000 and tok.convert_ids_to_tokens(29871) == "▁" and tok.bos_token == "<s>"
    assert tok.convert_ids_to_tokens(tok.encode("云")) == ["<s>", "▁", "云"]
    with pytest.raises(RuntimeError, match="encode"):
        real_tokenizers.check_llama2(tok, [(text, ids[:-1]) for text, ids in cases])


@pytest.mark.parametrize("name", real_tokenizers.NAMES)
def test_every_bundled_word_on_every_real_tokenizer(real_tokenizer, bundled_words, name):
    tok = real_tokenizer(name)
    info = vocab_info(tok)
    assert info.marker == ("Ġ" if name in ("llama3", "qwen3") else "▁")
    for lang, words in bundled_words.items():
        for word in words:
            ids = token_set(tok, word)
            assert ids, (name, lang, word)
            texts = [tok.decode([i]) for i in ids]
            assert all(t.strip() for t in texts), (name, word, texts)  # no whitespace-only token
            assert not set(ids) & info.special, (name, word)
            assert own_first_token(tok, word) in ids, (name, lang, word, tok.convert_ids_to_tokens(ids))
            assert token_set(tok, word, own_first_token=True) == ids  # the old extra rule adds nothing here


def strings(tok, word: str, **kw) -> set[str]:
    return set(tok.convert_ids_to_tokens(token_set(tok, word, **kw)))


def test_exact_sets_on_llama2(real_tokenizer):
    """Worked out by hand from the rule: prefixes ± ▁ that are in the vocabulary, first byte for non-ASCII."""
    tok = real_tokenizer("llama2")
    assert strings(tok, "云") == {"云", "<0xE4>"}  # the paper's own Translation.ipynb shows [31784, 231]
    assert token_set(tok, "云") == [231, 31784]
    assert strings(tok, "花") == {"花", "<0xE8>"}
    assert strings(tok, "book") == {"b", "▁b", "bo", "▁bo", "book", "▁book"}  # "boo"/"▁boo" are no tokens
    assert len(token_set(tok, "book")) == 6
    assert strings(tok, "chien") == {"c", "▁c", "ch", "▁ch", "chi", "▁chi"}  # ASCII: no first byte
    assert strings(tok, "облако") == {"о", "▁о", "об", "▁об", "▁обла", "<0xD0>"}
    assert strings(tok, "école") == {"é", "▁é", "éc", "▁éc", "<0xC3>"}  # non-ASCII first letter: its byte
    assert strings(tok, "book", strict=True) == {"bo", "▁bo", "book", "▁book"}
    assert strings(tok, "облако", strict=True) == {"об", "▁об", "▁обла"}
    assert strings(tok, "云", strict=True) == {"云", "<0xE4>"}


@pytest.mark.parametrize("name,marker_id", [("llama2", 29871), ("mistral", 28705)])
def test_bare_marker_is_in_no_chinese_set(real_tokenizer, bundled_words, name, marker_id):
    tok = real_tokenizer(name)
    assert tok.convert_ids_to_tokens(marker_id) == "▁"
    assert tok.encode("云", add_special_tokens=False)[0] == marker_id  # the trap: the word's own first token
    for word in bundled_words["zh"]:
        assert marker_id not in token_set(tok, word)
        assert marker_id not in token_set(tok, word, own_first_token=True)


def test_byte_level_vocabularies_start_characters_with_byte_prefixes(real_tokenizer):
    tok = real_tokenizer("llama3")
    first = tok.encode("厨房", add_special_tokens=False)[0]  # a two-of-three-bytes token starts this word
    assert len(tok.convert_ids_to_tokens(first)) == 2
    assert first in token_set(tok, "厨房")
    assert strings(tok, "book") == {"b", "Ġb", "bo", "Ġbo", "boo", "Ġboo", "book", "Ġbook"}
    assert "Ġ" not in strings(tok, "book") and not strings(tok, "云") & {"Ġ", " "}
