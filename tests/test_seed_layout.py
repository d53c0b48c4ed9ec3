"""The paper's word files (DIR/<lang>/clean.csv) and prompt files end to end, and every bad data file answered."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from llmlatent import tasks
from llmlatent.languages import registry as languages
from llmlatent.languages import words as data

SEED = Path(__file__).parent / "data" / "seed_langs"
PROMPTS = Path(__file__).parent / "data" / "seed_prompts.csv"


def seed_rows(lang: str) -> pd.DataFrame:
    return pd.read_csv(SEED / lang / "clean.csv", dtype=str, keep_default_na=False).set_index("word_original")


@pytest.mark.parametrize("lang", languages.PAPER)
def test_cloze_prompts_as_the_papers_notebook(spm_tokenizer, lang):
    ps = tasks.build("cloze", lang, lang, spm_tokenizer, words_dir=SEED, seed=1)
    rows = seed_rows(lang)
    assert len(ps) + sum(ps.dropped.values()) == len(rows) and len(ps) >= 3
    for _, row in ps.df.iterrows():
        lines = row["prompt"].split("\n")
        masked = rows.loc[row["concept"], "blank_prompt_translation_masked"]
        label = "答案：" if lang == "zh" else languages.get(lang).answer
        assert len(lines) == 3
        # the examples: other concepts' full masked lines, label and quoted answer included, verbatim
        for line in lines[:2]:
            assert line in set(rows["blank_prompt_translation_masked"]) and line != masked and label in line
        # the query: the masked line cut at the label, ending at the open quote, its answer nowhere in the prompt
        cut = masked.split("：" if lang == "zh" else ":")[0]
        assert lines[-1] == cut + ': "' and lines[-1].endswith(': "')
        assert row["tgt_word"] not in lines[-1] and f'"{row["tgt_word"]}"' not in row["prompt"]
        assert lines[-1].count(":") == 1 and label.rstrip(":：") in lines[-1]


def test_translation_prompts_from_the_seed_layout(spm_tokenizer):
    ps = tasks.build("translation", "fr", "zh", spm_tokenizer, words_dir=SEED, seed=0)
    fr, zh = seed_rows("fr"), seed_rows("zh")
    assert len(ps) >= 3
    for _, row in ps.df.iterrows():
        lines = row["prompt"].split("\n")
        assert len(lines) == 5 and lines[-1] == f'Français: "{fr.loc[row["concept"], "word_translation"]}" - 中文: "'
        assert row["tgt_word"] == zh.loc[row["concept"], "word_translation"]
        for line in lines[:4]:
            concept = fr.index[fr["word_translation"] == line.split('"')[1]][0]
            assert (
                line
                == f'Français: "{fr.loc[concept, "word_translation"]}" - 中文: "{zh.loc[concept, "word_translation"]}"'
            )
            assert concept != row["concept"]


def test_seed_prompt_file(spm_tokenizer):
    ps = tasks.from_prompt_file(PROMPTS, spm_tokenizer)
    assert len(ps) == 6 and ps.df["prompt"].str.endswith('中文: "').all()
    assert ps.df["source_ids"].map(bool).all() and ps.meta["source_file"] == "seed_prompts.csv"
    assert ps.df.iloc[0]["target_ids"] != [1, 2]  # ids in the file are ignored, recomputed for this tokenizer


def copy_seed(tmp_path: Path, edit: dict[str, callable]) -> Path:
    folder = tmp_path / "words"
    for lang in languages.PAPER:
        frame = pd.read_csv(SEED / lang / "clean.csv", dtype=str, keep_default_na=False)
        frame = edit.get(lang, lambda f: f)(frame)
        (folder / lang).mkdir(parents=True)
        frame.to_csv(folder / lang / "clean.csv", index=False)
    return folder


def test_duplicate_concepts_name_the_file_and_lines(spm_tokenizer, tmp_path):
    def conflicting(frame):
        extra = frame.iloc[[2]].assign(word_original="cloud")  # a second "cloud" row that says 包
        return pd.concat([frame, extra], ignore_index=True)

    folder = copy_seed(tmp_path, {"zh": conflicting})
    with pytest.raises(
        data.DataError, match=r"zh/clean.csv: concept 'cloud' appears on lines 3, 8 with different rows"
    ):
        tasks.build("translation", "fr", "zh", spm_tokenizer, words_dir=folder)
    identical = copy_seed(tmp_path / "b", {"zh": lambda f: pd.concat([f, f.iloc[[1]]], ignore_index=True)})
    assert len(data.read_words("zh", identical)) == 6  # an exact repeat is used once (with a warning)


def test_empty_words_are_counted_and_never_prompted(spm_tokenizer, tmp_path):
    def blank(frame):
        frame = frame.copy()
        frame.loc[1, "word_translation"] = "   "  # whitespace only
        frame.loc[3, "word_translation"] = ""
        return frame

    folder = copy_seed(tmp_path, {"fr": blank})
    ps = tasks.build("translation", "fr", "zh", spm_tokenizer, words_dir=folder)
    assert ps.dropped["empty_word"] == 2 and ps.meta["n_concepts"] == 6
    assert len(ps) + sum(ps.dropped.values()) == 6
    assert '"   "' not in "".join(ps.prompts) and '""' not in "".join(ps.prompts)
    assert {"cloud", "mountain"}.isdisjoint(ps.df["concept"])


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "the file is empty"),
        (b"concept,word,cloze_masked,cloze_filled\n", "a header but no data rows"),
        (
            'concept,word,cloze_masked,cloze_filled\ncafé,café,"Un ___.","Un café."\n'.encode("cp1252"),
            "save it as UTF-8",
        ),
    ],
)
def test_bad_word_files_name_the_file(tmp_path, content, message):
    (tmp_path / "fr.csv").write_bytes(content)
    with pytest.raises(data.DataError, match=message) as info:
        data.read_words("fr", tmp_path)
    assert "fr.csv" in str(info.value) and "\n" not in str(info.value)


def test_crlf_bom_and_unicode_still_work(spm_tokenizer, tmp_path):
    folder = tmp_path / "wörter ☁"
    folder.mkdir()
    for lang in languages.PAPER:
        text = (languages.words_dir() / f"{lang}.csv").read_text(encoding="utf-8")
        (folder / f"{lang}.csv").write_bytes("\ufeff".encode() + text.replace("\n", "\r\n").encode("utf-8"))
    got = tasks.build("translation", "de", "zh", spm_tokenizer, words_dir=folder, n=5, seed=2)
    want = tasks.build("translation", "de", "zh", spm_tokenizer, n=5, seed=2)
    assert got.df.to_csv() == want.df.to_csv()


def test_prompt_file_errors_and_empty_rows(spm_tokenizer, tmp_path):
    with pytest.raises(data.DataError, match="is a folder"):
        tasks.from_prompt_file(tmp_path, spm_tokenizer)
    frame = pd.read_csv(PROMPTS, dtype=str, keep_default_na=False)
    frame.loc[1, "prompt"] = "  \n "
    frame.loc[4, "prompt"] = ""
    frame.to_csv(tmp_path / "p.csv", index=False)
    ps = tasks.from_prompt_file(tmp_path / "p.csv", spm_tokenizer)
    assert len(ps) == 4 and ps.dropped["empty_prompt"] == 2
    (tmp_path / "cp.csv").write_bytes(
        'prompt,out_token_str,latent_token_str\n"Français: ""é"" - ",é,e\n'.encode("cp1252")
    )
    with pytest.raises(data.DataError, match="cp.csv: not UTF-8.*save it as UTF-8"):
        tasks.from_prompt_file(tmp_path / "cp.csv", spm_tokenizer)


def test_custom_prompts(spm_tokenizer):
    ps = tasks.custom(
        ['Français: "nuage" - 中文: "', "   ", 'Deutsch: "Berg" - 中文: "'],
        ["云", "花", "山"],
        ["cloud", "flower", "mountain"],
        ["nuage", "fleur", "Berg"],
        tokenizer=spm_tokenizer,
    )
    assert len(ps) == 2 and ps.dropped["empty_prompt"] == 1
    assert ps.df["tgt_word"].tolist() == ["云", "山"] and all(ps.df["source_ids"].map(bool))
    one = tasks.custom('English: "cloud" - 中文: "', "云", "cloud", tokenizer=spm_tokenizer)
    assert len(one) == 1 and one.df.iloc[0]["source_ids"] is None
    with pytest.raises(data.DataError, match="2 prompts but 1 target_words"):
        tasks.custom(["a", "b"], ["云"], ["cloud", "x"], tokenizer=spm_tokenizer)
