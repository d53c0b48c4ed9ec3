"""Token sets on both tokenizer kinds: SentencePiece with byte fallback (▁) and byte-level BPE (Ġ)."""

from __future__ import annotations

from llmlatent.tokens import byte_to_unicode, is_alphabetic, token_set, vocab_info


def strings(tok, ids):
    return set(tok.convert_ids_to_tokens(ids))


def test_vocab_kinds(spm_tokenizer, bpe_tokenizer):
    spm, bpe = vocab_info(spm_tokenizer), vocab_info(bpe_tokenizer)
    assert spm.marker == "▁" and spm.byte_fallback and not spm.byte_level
    assert bpe.marker == "Ġ" and bpe.byte_level and not bpe.byte_fallback


def test_sentencepiece_prefixes_with_and_without_marker(spm_tokenizer):
    got = strings(spm_tokenizer, token_set(spm_tokenizer, "nuage"))
    assert {"nu", "▁nu", "n", "▁n"} <= got
    assert all(s.lstrip("▁") and "nuage".startswith(s.lstrip("▁")) or s.startswith("<0x") for s in got)
    strict = strings(spm_tokenizer, token_set(spm_tokenizer, "nuage", strict=True))
    assert "n" not in strict and "▁n" not in strict and "nu" in strict
    assert strict < got


def test_sentencepiece_cjk_and_byte_fallback(spm_tokenizer):
    got = strings(spm_tokenizer, token_set(spm_tokenizer, "花"))
    assert "花" in got
    assert f"<0x{'花'.encode()[0]:02X}>" in got  # first UTF-8 byte for byte-fallback vocabularies
    # strict keeps single characters for non-alphabetic scripts
    assert "花" in strings(spm_tokenizer, token_set(spm_tokenizer, "花", strict=True))


def test_cyrillic_strict_drops_first_byte(spm_tokenizer):
    loose = strings(spm_tokenizer, token_set(spm_tokenizer, "облако"))
    strict = strings(spm_tokenizer, token_set(spm_tokenizer, "облако", strict=True))
    assert "<0xD0>" in loose and "<0xD0>" not in strict
    assert all(len(s.lstrip("▁")) >= 2 for s in strict)


def test_byte_level_bpe_prefixes(bpe_tokenizer):
    table = byte_to_unicode()
    for word in ("fleur", "book", "облако"):
        encoded = "".join(table[b] for b in word.encode())
        expected = {
            s for s in bpe_tokenizer.get_vocab() if s.removeprefix("Ġ") and encoded.startswith(s.removeprefix("Ġ"))
        }
        assert strings(bpe_tokenizer, token_set(bpe_tokenizer, word)) == expected
    assert "Ġb" in strings(bpe_tokenizer, token_set(bpe_tokenizer, "book"))
    flower = "".join(table[b] for b in "花".encode())
    cjk = strings(bpe_tokenizer, token_set(bpe_tokenizer, "花"))
    assert table["花".encode()[0]] in cjk  # first byte of the character
    assert all(flower.startswith(s.lstrip("Ġ")) for s in cjk)
    strict = strings(bpe_tokenizer, token_set(bpe_tokenizer, "fleur", strict=True))
    assert "f" not in strict and "Ġf" not in strict


def test_bytes_to_unicode_is_a_bijection():
    table = byte_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256


def test_alphabetic_detection():
    assert is_alphabetic("Buch") and is_alphabetic("облако")
    assert not is_alphabetic("花") and not is_alphabetic("3d")


def test_empty_word_has_no_tokens(spm_tokenizer):
    assert token_set(spm_tokenizer, "  ") == []


def test_first_byte_only_for_non_ascii_first_characters(spm_tokenizer):
    assert "<0x62>" not in strings(spm_tokenizer, token_set(spm_tokenizer, "book"))
    assert "<0xC3>" in strings(spm_tokenizer, token_set(spm_tokenizer, "école"))


def test_whitespace_only_and_special_tokens_never_count(spm_tokenizer):
    info = vocab_info(spm_tokenizer)
    for word in ("云", "book", "облако", "<bos>"):
        for own in (False, True):
            ids = token_set(spm_tokenizer, word, own_first_token=own)
            assert all(spm_tokenizer.decode([i]).strip() for i in ids) and not set(ids) & info.special
