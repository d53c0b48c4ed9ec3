"""The fast prompt-set path (memoised token sets, list lookups, cached word files) against plain reference code.

The references below are written from the other side on purpose: the token-set rule walks the whole
vocabulary once and asks of every token "is it a prefix of the word (after one leading marker)?",
and the prompt builder is the original pandas loop (``iterrows``, ``table.loc``). Any difference in
a token id, a drop count or a prompt byte fails the test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmlatent import tasks
from llmlatent.languages import registry as languages
from llmlatent.languages import words as data
from llmlatent.languages.registry import label
from llmlatent.languages.words import MASK
from llmlatent.tokens import token_set

MARKERS = {"llama2": "▁", "gemma3": "▁", "llama3": "Ġ"}


def gpt2_bytes() -> dict[str, int]:
    """GPT-2's printable character -> byte table of byte-level BPE vocabularies, written out plainly."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + k) for k, b in enumerate(others)})
    return {c: b for b, c in chars.items()}


def reference_sets(tok, marker: str, words: list[str]) -> dict[str, list[int]]:
    """Return {word: ids} by one scan of the vocabulary: a token counts for a word when its text, less one
    leading marker, is a non-empty prefix of the word (for byte-level vocabularies: a prefix in bytes that
    ends on a character boundary, or a proper byte prefix of a non-ASCII first character), or when it is
    the ``<0xNN>`` token of a non-ASCII first character's first byte. Special tokens never count."""
    inverse = gpt2_bytes()
    byte_level = marker == "Ġ"
    wanted: dict[bytes, set[str]] = {}  # prefix (as UTF-8 bytes) -> words it starts
    first_byte: dict[str, set[str]] = {}  # "<0xE4>" -> words whose non-ASCII first character starts with that byte
    for word in words:
        w = word.strip()
        for i in range(1, len(w) + 1):
            wanted.setdefault(w[:i].encode(), set()).add(word)
        head = w[:1].encode()
        if len(head) > 1:
            first_byte.setdefault(f"<0x{head[0]:02X}>", set()).add(word)
            if byte_level:
                for j in range(1, len(head)):
                    wanted.setdefault(head[:j], set()).add(word)
    special = set(tok.all_special_ids)
    out: dict[str, set[int]] = {word: set() for word in words}
    for text, token_id in tok.get_vocab().items():
        if token_id in special:
            continue
        hits = set(first_byte.get(text, ())) if not byte_level else set()
        if byte_level:
            if not all(c in inverse for c in text):
                continue
            raw = bytes(inverse[c] for c in text)
            bodies = {raw, raw[1:] if raw.startswith(b" ") else raw}
        else:
            bodies = {text.encode(), text.removeprefix(marker).encode()}
        for body in bodies:
            hits |= wanted.get(body, set())
        for word in hits:
            out[word].add(token_id)
    return {word: sorted(ids) for word, ids in out.items()}


@pytest.mark.parametrize("name", sorted(MARKERS))
def test_token_sets_match_a_full_vocabulary_scan(real_tokenizer, name):
    tok = real_tokenizer(name)
    words = sorted({w for lang in languages.PAPER for w in data.read_words(lang)["word"]})
    expected = reference_sets(tok, MARKERS[name], words)
    for word in words:
        first = token_set(tok, word)
        assert first == expected[word], (
            name,
            word,
            tok.convert_ids_to_tokens(first),
            tok.convert_ids_to_tokens(expected[word]),
        )
        first.append(-1)  # a caller changing its list must not change the memoised answer
        assert token_set(tok, word) == expected[word], (name, word)


def reference_build(task: str, src: str, tgt: str, tok, seed: int, n: int | None = None) -> tuple[pd.DataFrame, dict]:
    """The prompt builder as plain pandas: iterrows over the table, table.loc for every cell, the paper's filters."""
    table = data.read_table(["en", src, tgt])
    rng = np.random.default_rng(seed)
    dropped = dict.fromkeys(tasks.DROP_REASONS, 0)
    dropped["empty_word"] = int(table.attrs.get("empty_word", 0))
    with_source = task == "translation" and src not in ("en", tgt)
    keep = []
    for i, row in table.iterrows():
        target = token_set(tok, row[f"word_{tgt}"])
        english = token_set(tok, row["word_en"])
        source = token_set(tok, row[f"word_{src}"]) if with_source else None
        if task == "cloze" and row[f"cloze_{tgt}"].count(MASK) != 1:
            dropped["no_cloze_mask"] += 1
        elif task != "cloze" and tgt != "en" and row["word_en"].lower() in row[f"word_{tgt}"].lower():
            dropped["english_in_target"] += 1
        elif not target:
            dropped["empty_target_set"] += 1
        elif not english:
            dropped["empty_english_set"] += 1
        elif tgt != "en" and set(target) & set(english):
            dropped["target_english_overlap"] += 1
        else:
            keep.append((i, target, english, source))
    if n is not None and n < len(keep):
        keep = [keep[j] for j in sorted(rng.choice(len(keep), size=n, replace=False).tolist())]
    records = []
    for pid, (i, target, english, source) in enumerate(keep):
        pool = np.array([j for j in range(len(table)) if j != i])
        shots = [int(j) for j in rng.choice(pool, size=min(2 if task == "cloze" else 4, len(pool)), replace=False)]
        if task == "cloze":
            text = (
                "".join(table.loc[j, f"cloze_example_{tgt}"] + "\n" for j in shots) + table.loc[i, f"cloze_query_{tgt}"]
            )
        else:
            text = "".join(
                f'{label(src)}: "{table.loc[j, f"word_{src}"]}" - {label(tgt)}: "{table.loc[j, f"word_{tgt}"]}"\n'
                for j in shots
            )
            text += f'{label(src)}: "{table.loc[i, f"word_{src}"]}" - {label(tgt)}: "'
        row = table.loc[i]
        records.append(
            {
                "prompt_id": pid,
                "task": task,
                "src": src,
                "tgt": tgt,
                "concept": row["concept"],
                "src_word": row[f"word_{src}"],
                "tgt_word": row[f"word_{tgt}"],
                "en_word": row["word_en"],
                "prompt": text,
                "target_ids": target,
                "english_ids": english,
                "source_ids": source,
            }
        )
    return pd.DataFrame(records), dropped


@pytest.mark.parametrize("name", ["gemma3", "llama2"])
@pytest.mark.parametrize(
    "spec",
    [
        ("translation", "fr", "zh", 0, None),
        ("translation", "ru", "en", 1, 40),
        ("repetition", "de", "de", 2, None),
        ("cloze", "zh", "zh", 0, None),
    ],
)
def test_prompt_sets_match_the_plain_pandas_builder(real_tokenizer, name, spec):
    tok = real_tokenizer(name)
    task, src, tgt, seed, n = spec
    expected, dropped = reference_build(task, src, tgt, tok, seed, n)
    got = tasks.build(task, src, tgt, tok, seed=seed, n=n)
    pd.testing.assert_frame_equal(got.df, expected, check_exact=True)
    assert got.df.to_json() == expected.to_json()
    assert got.dropped == dropped


def test_word_files_are_read_again_when_their_bytes_change(tmp_path):
    folder = tmp_path / "langs"
    folder.mkdir()
    (folder / "en.csv").write_text(
        "concept,word,cloze_masked,cloze_filled\ncloud,cloud,A ___ floats.,A cloud floats.\n", encoding="utf-8"
    )
    first = data.read_words("en", folder)
    first.loc[0, "word"] = "changed by the caller"  # each call gets its own frame
    assert data.read_words("en", folder)["word"].tolist() == ["cloud"]
    (folder / "en.csv").write_text(
        "concept,word,cloze_masked,cloze_filled\ncloud,cloud,A ___ floats.,A cloud floats.\n"
        "book,book,You read a ___.,You read a book.\n",
        encoding="utf-8",
    )
    assert data.read_words("en", folder)["word"].tolist() == ["cloud", "book"]
