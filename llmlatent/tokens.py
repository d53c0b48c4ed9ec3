"""Token-id sets that count as "the model starts to say word w", for any tokenizer.

A word counts as said when the next token is any prefix of it, with or without the tokenizer's
word-start marker (``▁`` for SentencePiece, ``Ġ`` for byte-level BPE), and, for byte-fallback
vocabularies, the token of its first UTF-8 byte (how a SentencePiece model starts a rare CJK
character). ``strict=True`` drops one-character prefixes (and the first byte) for alphabetic
scripts: a robustness check the paper did not run.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

SPM_MARKER = "▁"
BPE_MARKER = "Ġ"


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """Return GPT-2's reversible byte → printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@dataclass(frozen=True)
class VocabInfo:
    """What kind of vocabulary a tokenizer has."""

    vocab: dict
    marker: str  # "▁", "Ġ" or "" (none detected)
    byte_level: bool
    byte_fallback: bool


def vocab_info(tokenizer: object) -> VocabInfo:
    """Return the tokenizer's vocabulary and its kind (cached on the tokenizer object)."""
    cached = getattr(tokenizer, "_llmlatent_vocab_info", None)
    if cached is not None:
        return cached
    vocab = tokenizer.get_vocab()
    spm = sum(1 for t in vocab if t.startswith(SPM_MARKER))
    bpe = sum(1 for t in vocab if t.startswith(BPE_MARKER))
    marker = SPM_MARKER if spm >= bpe and spm > 0 else (BPE_MARKER if bpe > 0 else "")
    info = VocabInfo(vocab=vocab, marker=marker, byte_level=marker == BPE_MARKER, byte_fallback="<0xE4>" in vocab)
    try:
        tokenizer._llmlatent_vocab_info = info
    except AttributeError:  # pragma: no cover - tokenizers that forbid new attributes
        pass
    return info


def is_alphabetic(word: str) -> bool:
    """Return True for words in an alphabetic script (Latin, Cyrillic, Greek …), False for CJK etc."""
    first = word[:1]
    if not first or not first.isalpha():
        return False
    name = unicodedata.name(first, "")
    return not any(tag in name for tag in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))


def token_set(tokenizer: object, word: str, *, strict: bool = False) -> list[int]:
    """Return the sorted token ids that start ``word``: its prefixes with/without the word-start marker.

    Non-strict (the paper): every prefix, the first UTF-8 byte's token for byte-fallback
    vocabularies, and the first token of the word's own tokenisation. Strict: for alphabetic words,
    only prefixes of at least two characters (no single letters, no first byte).
    """
    word = word.strip()
    if not word:
        return []
    info = vocab_info(tokenizer)
    min_chars = 2 if strict and is_alphabetic(word) and len(word) >= 2 else 1
    if info.byte_level:
        table = byte_to_unicode()
        pieces = ["".join(table[b] for b in word[:i].encode("utf-8")) for i in range(min_chars, len(word) + 1)]
        if not strict or not is_alphabetic(word):  # partial characters: byte prefixes of the first char
            first = word[0].encode("utf-8")
            pieces += ["".join(table[b] for b in first[:j]) for j in range(1, len(first))]
    else:
        pieces = [word[:i] for i in range(min_chars, len(word) + 1)]
    ids = set()
    for piece in pieces:
        for candidate in (piece, info.marker + piece) if info.marker else (piece,):
            if candidate in info.vocab:
                ids.add(int(info.vocab[candidate]))
    if min_chars == 1:
        if info.byte_fallback:
            byte_token = f"<0x{word.encode('utf-8')[0]:02X}>"
            if byte_token in info.vocab:
                ids.add(int(info.vocab[byte_token]))
        own = tokenizer.encode(word, add_special_tokens=False)
        if own:
            ids.add(int(own[0]))
    return sorted(ids)


def describe(tokenizer: object, ids: list[int]) -> list[str]:
    """Return the vocabulary strings of token ids (for reports and debugging)."""
    return tokenizer.convert_ids_to_tokens(list(ids))
