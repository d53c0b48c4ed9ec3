"""Bundled word data, prompt builders, the paper's filters, user CSVs and bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from llmlatent import tasks
from llmlatent.languages import registry as languages
from llmlatent.languages import words as data


@pytest.mark.parametrize("lang", languages.PAPER)
def test_bundled_word_data_is_complete(lang):
    frame = pd.read_csv(languages.words_dir() / f"{lang}.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(data.COLUMNS)
    assert len(frame) >= 120
    assert (frame != "").all().all(), "empty cells"
    assert frame["concept"].is_unique and frame["word"].is_unique
    for masked, filled, word in zip(frame["cloze_masked"], frame["cloze_filled"], frame["word"]):
        assert masked.count(data.MASK) == 1, masked
        assert filled == masked.replace(data.MASK, word), "the cloze answer must equal the word"
        assert " " not in word
    english = pd.read_csv(languages.words_dir() / "en.csv", dtype=str)
    assert frame["concept"].tolist() == english["concept"].tolist()
    if lang == "zh":
        assert (frame["word"].str.len() <= 2).mean() > 0.9


def test_translation_prompt_format(spm_tokenizer):
    ps = tasks.build("translation", "fr", "zh", spm_tokenizer, n=10, seed=3)
    assert len(ps) == 10
    row = ps.df.iloc[0]
    lines = row["prompt"].split("\n")
    assert len(lines) == 5
    assert lines[-1] == f'Français: "{row["src_word"]}" - 中文: "'
    assert all(line.startswith('Français: "') and line.endswith('"') and ' - 中文: "' in line for line in lines[:4])
    assert row["source_ids"] and row["target_ids"] and row["english_ids"]
    assert row["concept"] not in "".join(lines[:4]).split('"')  # the query is not among its own shots


def test_same_seed_same_prompts_byte_for_byte(spm_tokenizer):
    a = tasks.build("translation", "de", "ru", spm_tokenizer, n=20, seed=7)
    b = tasks.build("translation", "de", "ru", spm_tokenizer, n=20, seed=7)
    c = tasks.build("translation", "de", "ru", spm_tokenizer, n=20, seed=8)
    assert a.df.to_csv().encode() == b.df.to_csv().encode()
    assert a.df["prompt"].tolist() != c.df["prompt"].tolist()


def test_repetition_and_cloze(spm_tokenizer):
    rep = tasks.build("repetition", "zh", "zh", spm_tokenizer, n=5)
    row = rep.df.iloc[0]
    assert row["prompt"].endswith(f'中文: "{row["tgt_word"]}" - 中文: "')
    assert rep.df["source_ids"].isna().all()
    cloze = tasks.build("cloze", "fr", "fr", spm_tokenizer, n=5)
    row = cloze.df.iloc[0]
    lines = row["prompt"].split("\n")
    assert len(lines) == 3 and lines[-1].endswith('Réponse: "') and data.MASK in lines[-1]
    assert lines[0].endswith('".') and 'Réponse: "' in lines[0]


def test_paper_filters_report_counts(spm_tokenizer):
    ps = tasks.build("translation", "de", "fr", spm_tokenizer)
    total = len(ps) + sum(ps.dropped.values())
    assert total == ps.meta["n_concepts"]
    for _, row in ps.df.iterrows():
        assert not set(row["target_ids"]) & set(row["english_ids"])
        assert row["en_word"].lower() not in row["tgt_word"].lower()
    assert ps.dropped["target_english_overlap"] > 0  # e.g. fleur/flower share "f", "fl"
    cognate = tasks.build("translation", "fr", "zh", spm_tokenizer, cognate_filter=True)
    assert cognate.dropped["source_english_overlap"] > 0 and len(cognate) < ps.meta["n_concepts"]
    assert "dropped" in ps.report()


def test_n_larger_than_available_uses_all_and_says_so(spm_tokenizer):
    ps = tasks.build("repetition", "en", "en", spm_tokenizer, n=10_000)
    assert len(ps) < 10_000 and ps.notes and "using all" in ps.notes[0]


def test_bad_input(spm_tokenizer, tmp_path):
    with pytest.raises(data.DataError, match="unknown language 'xx' .*; available: en, fr, de, ru, zh"):
        tasks.build("translation", "fr", "xx", spm_tokenizer)
    with pytest.raises(data.DataError, match="use task='repetition'"):
        tasks.build("translation", "fr", "fr", spm_tokenizer)
    (tmp_path / "fr.csv").write_text("lang,word_original\nfr,cloud\n")
    with pytest.raises(data.DataError, match="missing column.*word_translation"):
        data.read_words("fr", tmp_path)
    # everything filtered out -> counts per reason
    for lang, word in (("en", "cat"), ("de", "Katze")):
        pd.DataFrame(
            {"concept": ["cat"], "word": [word], "cloze_masked": ['A "___".'], "cloze_filled": [f'A "{word}".']}
        ).to_csv(tmp_path / f"{lang}.csv", index=False)
    pd.DataFrame(
        {"concept": ["cat"], "word": ["cat"], "cloze_masked": ['A "___".'], "cloze_filled": ['A "cat".']}
    ).to_csv(tmp_path / "fr.csv", index=False)
    with pytest.raises(data.DataError, match="filtered out.*english_in_target"):
        tasks.build("translation", "de", "fr", spm_tokenizer, words_dir=tmp_path)


def test_seed_layout_word_csv_and_prompt_file(spm_tokenizer, tmp_path):
    seed_dir = tmp_path / "seed"
    for lang, words in {
        "en": ["book", "cloud", "bag", "mountain", "flower", "water"],
        "fr": ["livre", "nuage", "sac", "montagne", "fleur", "eau"],
        "zh": ["书", "云", "包", "山", "花", "水"],
    }.items():
        (seed_dir / lang).mkdir(parents=True)
        pd.DataFrame(
            {
                "lang": lang,
                "word_original": ["book", "cloud", "bag", "mountain", "flower", "water"],
                "word_translation": words,
                "blank_prompt_translation_masked": [f'X "_" {w}.' for w in range(6)],
                "word_translation_token_id": 123,
            }
        ).to_csv(seed_dir / lang / "clean.csv", index=False)
    ps = tasks.build("translation", "fr", "zh", spm_tokenizer, words_dir=seed_dir)
    assert set(ps.df["tgt_word"]) <= {"书", "云", "包", "山", "花", "水"} and len(ps) >= 4
    assert data.read_words("fr", seed_dir)["cloze_masked"].str.contains("___").all()
    prompt_file = tmp_path / "prompts.csv"
    pd.DataFrame(
        {
            "prompt": ['Français: "nuage" - 中文: "'],
            "out_token_str": ["云"],
            "latent_token_str": ["cloud"],
            "in_token_str": ["nuage"],
            "out_token_id": [999],
        }
    ).to_csv(prompt_file, index=False)
    replay = tasks.from_prompt_file(prompt_file, spm_tokenizer)
    assert replay.df.iloc[0]["target_ids"] and replay.df.iloc[0]["source_ids"]
    with pytest.raises(data.DataError, match="missing column.*latent_token_str"):
        pd.DataFrame({"prompt": ["x"], "out_token_str": ["y"]}).to_csv(tmp_path / "bad.csv", index=False)
        tasks.from_prompt_file(tmp_path / "bad.csv", spm_tokenizer)


def test_english_inside_target_filter_is_for_translation_only(spm_tokenizer, tmp_path):
    """The paper's Translation notebook drops 'English word inside the target word'; its Cloze notebook does not."""
    rows = {"en": ["at", "dog", "sun"], "fr": ["chat", "chien", "soleil"], "de": ["Katze", "Hund", "Sonne"]}
    for lang, words in rows.items():
        pd.DataFrame(
            {
                "concept": rows["en"],
                "word": words,
                "cloze_masked": ['Un "___".'] * 3,
                "cloze_filled": [f'Un "{w}".' for w in words],
            }
        ).to_csv(tmp_path / f"{lang}.csv", index=False)
    translation = tasks.build("translation", "de", "fr", spm_tokenizer, words_dir=tmp_path)
    cloze = tasks.build("cloze", "fr", "fr", spm_tokenizer, words_dir=tmp_path)
    assert translation.dropped["english_in_target"] == 1 and "at" not in set(translation.df["concept"])
    at = cloze.df.set_index("concept").loc["at"]  # kept: 'at' is inside 'chat', but no token is shared
    assert not set(at["target_ids"]) & set(at["english_ids"]) and cloze.dropped["english_in_target"] == 0
