"""Token-id sets that count as "the model starts to say word w", for any tokenizer.

The rule is the paper's (Translation.ipynb / Cloze.ipynb of epfl-dlab/llm-latent-language):

* every prefix ``w[:1] … w[:len(w)]`` of the word that is a vocabulary entry, each both as is and
  with the tokenizer's word-start marker in front (``▁`` for SentencePiece, ``Ġ`` for byte-level BPE);
* plus, only when the word's first character is not ASCII (Chinese, Russian, accented letters), the
  token of the first UTF-8 byte of that character: ``<0xE4>`` in byte-fallback vocabularies
  (Llama-2, Mistral, Gemma), which is how such a model starts a character it has no token for.

A token whose text is whitespace only (such as Llama-2's bare ``▁``, id 29871) or a special token
never counts.

Byte-level BPE vocabularies (GPT-2, Llama-3, Qwen) store every token as bytes written through
GPT-2's byte → character table and have no ``<0xNN>`` tokens. There the prefixes are the same
character prefixes, written as bytes; the marker is ``Ġ`` (the space byte); and the "first byte"
part becomes every proper byte prefix of the first character (one byte, or two of a three-byte
CJK character), with and without ``Ġ``, because byte-level merges can start a character with a
partial-byte token (Llama-3 starts 29 of the bundled Chinese words that way).

Options (both off by default): ``strict`` drops one-character prefixes and the first-byte tokens
for alphabetic words (a robustness check the paper did not run); ``own_first_token`` also admits
the first token of the word's own tokenisation after any leading whitespace-only token (the rule of
earlier versions of this package; on the paper's vocabularies it adds nothing new).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, cast

from llmlatent.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerBase


SPM_MARKER = "▁"
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
BPE_MARKER = "Ġ"


# the token-set columns of a prompt set (role → column of id lists); one owner, used by tasks, lens and latents
SET_COLUMNS = {"target": "target_ids", "english": "english_ids", "source": "source_ids"}
LATENT_PREFIX = "latent_"  # latent_<code>_ids: the concept's token set in latent language <code> (p_latent_<code>)


def latent_column(code: str) -> str:
    """Return the prompt-frame column of the token sets of latent language ``code`` (``latent_fr_ids``)."""
    return f"{LATENT_PREFIX}{code}_ids"


def set_columns(columns: Iterable[str]) -> dict[str, str]:
    """Return name → column of the token-set columns among ``columns``: target, english, source (in that order, where
    present), then every latent-language column in the given order (name ``latent_<code>``; its probability is
    ``p_latent_<code>``)."""
    columns = list(columns)
    fixed = {name: column for name, column in SET_COLUMNS.items() if column in columns}
    latent = {c.removesuffix("_ids"): c for c in columns if c.startswith(LATENT_PREFIX) and c.endswith("_ids")}
    return {**fixed, **latent}


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """Return GPT-2's reversible byte → printable character map used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """Return the inverse of :func:`byte_to_unicode`."""
    return {c: b for b, c in byte_to_unicode().items()}


@dataclass(frozen=True)
class VocabInfo:
    """What kind of vocabulary a tokenizer has."""

    vocab: dict
    marker: str  # "▁", "Ġ" or "" (none detected)
    byte_level: bool
    byte_fallback: bool
    special: frozenset = frozenset()  # ids of special tokens (never in a set)
    # token_set's answers for this tokenizer: (stripped word, strict, own_first_token) -> sorted ids. It lives
    # as long as this VocabInfo (cached on the tokenizer object), so it never outlives the vocabulary it read
    memo: dict = field(default_factory=dict, compare=False, repr=False)
    sha256: list = field(default_factory=list, compare=False, repr=False)  # [vocab_sha256's answer] once computed


def vocab_info(tokenizer: PreTrainedTokenizerBase) -> VocabInfo:
    """Return the tokenizer's vocabulary and its kind (cached on the tokenizer object)."""
    cached = getattr(tokenizer, "_llmlatent_vocab_info", None)
    if cached is not None:
        return cached
    vocab = tokenizer.get_vocab()
    spm = sum(1 for t in vocab if t.startswith(SPM_MARKER))
    bpe = sum(1 for t in vocab if t.startswith(BPE_MARKER))
    marker = SPM_MARKER if spm >= bpe and spm > 0 else (BPE_MARKER if bpe > 0 else "")
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            special.add(int(token_id))
    info = VocabInfo(
        vocab=vocab,
        marker=marker,
        byte_level=marker == BPE_MARKER,
        byte_fallback="<0xE4>" in vocab,
        special=frozenset(special),
    )
    try:
        tokenizer._llmlatent_vocab_info = info
    except AttributeError:  # pragma: no cover - tokenizers that forbid new attributes
        pass
    return info


def vocab_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """Return the sha256 hex of the tokenizer's vocabulary: every (token, id) pair, sorted (cached on the tokenizer).

    Two tokenizers with the same hash map every token text to the same id. Hashing Gemma 3's 262k entries
    takes about 0.5 s, so it is computed once per tokenizer object (beside :func:`vocab_info`'s cache).
    """
    info = vocab_info(tokenizer)
    if not info.sha256:
        items = sorted((int(i), t) for t, i in info.vocab.items())
        text = "\n".join(f"{i}\t{t}" for i, t in items)
        info.sha256.append(hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
    return info.sha256[0]


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> dict:
    """Return the identity a PromptSet keeps of the tokenizer that made its sets: vocabulary sha256, size, name."""
    return {"sha256": vocab_sha256(tokenizer), "size": len(tokenizer), "name": getattr(tokenizer, "name_or_path", "")}


def check_tokenizer_object(tokenizer: object, where: str) -> PreTrainedTokenizerBase:
    """Return ``tokenizer`` if it is a tokenizer object (has a vocabulary); else raise a DataError naming ``where``."""
    if not callable(getattr(tokenizer, "get_vocab", None)) or not callable(getattr(tokenizer, "encode", None)):
        raise DataError(
            f"{where}: tokenizer must be a tokenizer object (model.tokenizer, or "
            f"transformers.AutoTokenizer.from_pretrained(path)), got {type(tokenizer).__name__} {tokenizer!r:.60}"
        )
    return cast("PreTrainedTokenizerBase", tokenizer)  # duck-typed above: has get_vocab and encode


def is_alphabetic(word: str) -> bool:
    """Return True for words in an alphabetic script (Latin, Cyrillic, Greek …), False for CJK etc."""
    first = word[:1]
    if not first or not first.isalpha():
        return False
    name = unicodedata.name(first, "")
    return not any(tag in name for tag in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))


def _counts(tokenizer: PreTrainedTokenizerBase, info: VocabInfo, token_id: int) -> bool:
    """Return False for special tokens and tokens whose text is whitespace only (e.g. a bare ``▁``)."""
    if token_id in info.special:
        return False
    return bool(_decoded(tokenizer, info, token_id).replace(SPM_MARKER, " ").strip())


def _decoded(tokenizer: PreTrainedTokenizerBase, info: VocabInfo, token_id: int) -> str:
    """Return a token's text, its bytes decoded for byte-level vocabularies (the marker kept)."""
    text = cast(str, tokenizer.convert_ids_to_tokens(token_id))  # one id in, one token text out
    if info.byte_level:
        inverse = unicode_to_byte()
        if all(c in inverse for c in text):
            text = bytes(inverse[c] for c in text).decode("utf-8", errors="replace")
    return text


def word_warning(tokenizer: PreTrainedTokenizerBase, word: str, ids: list[int]) -> str | None:
    """Return why ``ids`` (the token set of ``word``) measure the word poorly, else None.

    Poorly: the set is empty (no prefix of the word is a token: a made-up word?), or a word of several
    letters in an alphabetic script has no token longer than one character (a byte token ``<0xE4>``
    counts as none), so the set only says that its first letter starts. CJK words are not warned
    about: their first character is the paper's measure.
    """
    word = word.strip()
    if not word:
        return None
    if not ids:
        return f"word {word!r} has no token in this vocabulary (a made-up word?)"
    info = vocab_info(tokenizer)
    longest = max(len(_BYTE_TOKEN.sub("", _decoded(tokenizer, info, i)).replace(SPM_MARKER, " ").strip()) for i in ids)
    if len(word) > 1 and longest <= 1 and is_alphabetic(word):
        return (
            f"word {word!r} has no token longer than one character: its token set {ids} only marks its first "
            "character (a made-up or rare word?)"
        )
    return None


def token_set(
    tokenizer: PreTrainedTokenizerBase, word: str, *, strict: bool = False, own_first_token: bool = False
) -> list[int]:
    """Return the sorted token ids that start ``word`` under the paper's rule (see the module docstring).

    ``strict``: for alphabetic words only prefixes of at least two characters and no first-byte
    token. ``own_first_token``: also the first token of ``tokenizer.encode(word)`` after leading
    whitespace-only tokens (still subject to ``strict``). Whitespace-only and special tokens never count.
    """
    word = word.strip()
    if not word:
        return []
    info = vocab_info(tokenizer)
    key = (word, strict, own_first_token)
    if key not in info.memo:
        if len(info.memo) >= 100_000:  # bound the memory of a long session with many custom words
            info.memo.clear()
        info.memo[key] = tuple(_token_set(tokenizer, info, word, strict, own_first_token))
    return list(info.memo[key])  # a new list each call: callers may keep or change it


def _token_set(
    tokenizer: PreTrainedTokenizerBase, info: VocabInfo, word: str, strict: bool, own_first_token: bool
) -> list[int]:
    """Return :func:`token_set` of a stripped, non-empty ``word`` (computed, not memoised)."""
    alphabetic_strict = strict and is_alphabetic(word) and len(word) >= 2
    min_chars = 2 if alphabetic_strict else 1
    pieces = [word[:i] for i in range(min_chars, len(word) + 1)]
    first = word[0].encode("utf-8")
    non_ascii = len(first) > 1
    if info.byte_level:
        table = byte_to_unicode()
        pieces = ["".join(table[b] for b in piece.encode("utf-8")) for piece in pieces]
        if non_ascii and not alphabetic_strict:  # the "first byte" of byte-level vocabularies: proper byte prefixes
            pieces += ["".join(table[b] for b in first[:j]) for j in range(1, len(first))]
    candidates = [c for piece in pieces for c in ((piece, info.marker + piece) if info.marker else (piece,))]
    if non_ascii and not alphabetic_strict and info.byte_fallback:
        candidates.append(f"<0x{first[0]:02X}>")
    ids = {int(info.vocab[c]) for c in candidates if c in info.vocab}
    if own_first_token:
        for token_id in tokenizer.encode(word, add_special_tokens=False):
            if _counts(tokenizer, info, token_id):
                text = cast(str, tokenizer.convert_ids_to_tokens(token_id)).removeprefix(info.marker)
                if not alphabetic_strict or len(text) >= 2:
                    ids.add(int(token_id))
                break
    return sorted(i for i in ids if _counts(tokenizer, info, i))


def check_ids(frame: pd.DataFrame, vocab_size: int | None = None) -> None:
    """Return None if every token id in the frame's set columns is an integer in [0, vocab_size); else DataError."""
    upper = math.inf if vocab_size is None else vocab_size
    for column in set_columns(frame.columns).values():
        for row, ids in enumerate(frame[column].tolist()):
            if ids is None or (isinstance(ids, float) and math.isnan(ids)):
                continue
            if isinstance(ids, str | bytes) or not hasattr(ids, "__iter__"):
                raise DataError(f"prompt set: {column} of row {row} must be a list of token ids, got {ids!r}")
            for t in ids:
                if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= cast(int, t) < upper:
                    span = "a whole number ≥ 0" if vocab_size is None else f"a whole number in [0, {vocab_size})"
                    raise DataError(
                        f"prompt set: token id {t!r} in {column} of row {row} is not {span} (the tokenizer's "
                        "vocabulary); build the prompt set with the model's tokenizer"
                    )
