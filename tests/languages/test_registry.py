"""Languages as data (llmlatent.languages.registry) and curves for several latent languages at once (--latent)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from llmlatent import tasks
from llmlatent.errors import DataError
from llmlatent.experiments import runs
from llmlatent.experiments.sweep import SweepSettings, compute
from llmlatent.languages import registry as languages
from llmlatent.latent_sets import add_latent_sets
from llmlatent.lens import last_token as lens

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_paper_labels_stay_exactly_as_they_are():
    got = {code: languages.get(code).label for code in languages.PAPER}
    assert got == {"en": "English", "fr": "Français", "de": "Deutsch", "ru": "Русский", "zh": "中文"}
    assert languages.codes()[:5] == languages.PAPER  # the paper's five first, in its order
    assert languages.get("fr").answer == "Réponse" and languages.get("ru").script == "Cyrl"


def _user_language(tmp_path, code="sv", words=None, meta=None):
    """Return a --words folder with ``code``.csv: the first 12 English concepts, in Swedish."""
    folder = tmp_path / "words"
    folder.mkdir(parents=True, exist_ok=True)
    en = pd.read_csv(languages.words_dir() / "en.csv", dtype=str, keep_default_na=False).head(12)
    swedish = "hund katt fågel fisk häst ko gris får mus björn apa elefant".split()
    frame = en.assign(word=words or swedish)
    frame["cloze_masked"] = [f'Ett "___" är {c}.' for c in en["concept"]]
    frame["cloze_filled"] = [m.replace("___", w) for m, w in zip(frame["cloze_masked"], frame["word"])]
    frame.to_csv(folder / f"{code}.csv", index=False)
    if meta is not None:
        (folder / "languages.csv").write_text(meta, encoding="utf-8")
    return folder


def test_a_user_language_gets_its_autonym_and_runs_through_a_sweep(tmp_path, tiny_models):
    folder = _user_language(tmp_path)
    sv = languages.get("sv", folder)
    assert (sv.label, sv.script, sv.answer) == ("Svenska", "Latn", "")  # langcodes' autonym, capitalised
    assert "sv" in languages.codes(folder) and "sv" not in languages.codes()
    model = tiny_models["gemma3_text"]
    settings = SweepSettings(src="fr", tgt="sv", words_dir=str(folder), n_prompts=4)
    result = compute(model, settings)
    assert len(result.prompts) == 4 and result.prompts.prompts[0].count('Svenska: "') == 5  # 4 shots + the query
    record = runs.run(settings, model, tmp_path / "out")
    assert record["tgt"] == "sv" and (tmp_path / "out" / "rows.csv").exists()
    with pytest.raises(DataError, match=r"no cloze answer label for 'sv'.*add a row 'sv,Svenska,"):
        tasks.build("cloze", "sv", "sv", model.tokenizer, words_dir=folder)
    labelled = _user_language(tmp_path / "b", meta="code,label,answer\nsv,Svenska språket,Svar\n")
    assert languages.get("sv", labelled).label == "Svenska språket"
    cloze = tasks.build("cloze", "sv", "sv", model.tokenizer, words_dir=labelled, n=2)
    assert cloze.prompts[0].endswith(' Svar: "')


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("xx", r"unknown language 'xx' \(not a valid BCP-47 language code\); available: en, fr, de, ru, zh"),
        ("sw", r"unknown language 'sw'; available: en, fr, de, ru, zh.*add sw.csv to a --words folder"),
        ("", r"unknown language ''"),
    ],
)
def test_unknown_codes_get_one_line(code, message):
    with pytest.raises(DataError, match=message) as info:
        languages.check_lang(code)
    assert "\n" not in str(info.value)


def test_code_lists_refuse_duplicates_and_too_few():
    assert languages.parse_codes("en, fr,zh", flag="--latent") == ("en", "fr", "zh")
    assert languages.parse_codes(("en", "de,ru"), flag="--latent") == ("en", "de", "ru")
    with pytest.raises(DataError, match="--latent lists fr more than once"):
        languages.parse_codes("en,fr,fr", flag="--latent")
    with pytest.raises(DataError, match="--langs needs at least 2 language"):
        languages.parse_codes("en", flag="--langs", at_least=2)
    with pytest.raises(DataError, match="unknown language 'qq'"):
        SweepSettings(latent=("en", "qq")).preflight()  # the languages are looked up before any model loads


def test_misaligned_and_malformed_files_are_refused(tmp_path, spm_tokenizer):
    folder = _user_language(tmp_path)
    frame = pd.read_csv(folder / "sv.csv", dtype=str)
    frame.loc[3, "concept"] = "doggo"  # a concept the English file does not have
    frame.to_csv(folder / "sv.csv", index=False)
    with pytest.raises(DataError, match=r"sv.csv: concept\(s\) 'doggo' are not in the English file"):
        tasks.build("translation", "fr", "sv", spm_tokenizer, words_dir=folder)
    (folder / "languages.csv").write_text("code,label\nsv,Svenska\n", encoding="utf-8")
    with pytest.raises(DataError, match="languages.csv: needs the columns code,label,answer"):
        languages.get("sv", folder)
    (folder / "languages.csv").write_text("code,label,answer\nsv,,Svar\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2 needs a code and a label"):
        languages.registry(folder)
    with pytest.raises(DataError, match="word folder .*missing does not exist"):
        languages.registry(tmp_path / "missing")


def test_a_user_file_overrides_the_bundled_one(tmp_path, spm_tokenizer):
    folder = tmp_path / "words"
    folder.mkdir()
    shutil.copy(languages.words_dir() / "zh.csv", folder / "zh.csv")
    frame = pd.read_csv(folder / "zh.csv", dtype=str)
    frame.loc[frame["concept"] == "cloud", "word"] = "雲"
    frame.to_csv(folder / "zh.csv", index=False)
    ps = tasks.build("translation", "fr", "zh", spm_tokenizer, words_dir=folder)
    assert ps.df.set_index("concept").loc["cloud", "tgt_word"] == "雲"


@pytest.fixture(scope="module")
def fr_zh(spm_tokenizer):
    return tasks.build("translation", "fr", "zh", spm_tokenizer, n=10, seed=3)


def test_latent_sets_use_the_papers_rule_and_count_overlaps(fr_zh, spm_tokenizer):
    from llmlatent.languages.words import read_words
    from llmlatent.tokens import token_set

    assert add_latent_sets(fr_zh, ("en",), spm_tokenizer) is fr_zh  # the paper's sweep, untouched
    marked = add_latent_sets(fr_zh, ("en", "de", "zh"), spm_tokenizer)
    de = dict(zip(*read_words("de")[["concept", "word"]].T.to_numpy()))
    for concept, ids in zip(marked.df["concept"], marked.df["latent_de_ids"]):
        assert ids == token_set(spm_tokenizer, de[concept])
    assert marked.df["latent_zh_overlap"].all()  # the target language's own set is the target set
    assert marked.meta["latent_target_overlap"]["zh"] == len(fr_zh)
    dropped = add_latent_sets(fr_zh, ("de", "zh"), spm_tokenizer, overlap="drop")
    assert dropped.df["latent_zh_ids"].isna().all()
    assert list(dropped.df.drop(columns=[c for c in dropped.df if c.startswith("latent_")]).columns) == list(fr_zh.df)


def test_a_latent_curve_equals_that_language_in_the_english_slot(tiny_models, fr_zh, spm_tokenizer):
    model = tiny_models["gemma3_text"]
    several = add_latent_sets(fr_zh, ("en", "fr", "de"), spm_tokenizer)
    rows = lens.sweep(model, several, progress=False, batch_size=3)
    for code in ("fr", "de"):
        slot = fr_zh.df.copy()
        slot["english_ids"] = several.df[f"latent_{code}_ids"]  # code's sets where English's were
        alone = lens.sweep(model, tasks.PromptSet(slot, meta=fr_zh.meta), progress=False, batch_size=7)
        assert np.abs(rows[f"p_latent_{code}"].to_numpy() - alone["p_english"].to_numpy()).max() <= 1e-7
    plain = lens.sweep(model, fr_zh, progress=False, batch_size=3)
    assert plain.equals(rows[plain.columns])  # the paper's columns do not move by a bit


def test_latent_en_writes_the_same_bytes_and_more_languages_only_add_columns(tmp_path, tiny_models):
    model = tiny_models["llama"]
    base = dict(src="fr", tgt="zh", n_prompts=6, seed=2)
    runs.run(SweepSettings(**base), model, tmp_path / "plain")
    runs.run(SweepSettings(**base, latent=("en",)), model, tmp_path / "en")
    record = runs.run(SweepSettings(**base, latent="en,de,ru"), model, tmp_path / "three")
    for name in ("rows.csv", "summary.csv", "prompts.csv"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "en" / name).read_bytes()
    for name in ("rows.csv", "summary.csv"):
        plain = (tmp_path / "plain" / name).read_text()
        three = pd.read_csv(tmp_path / "three" / name)
        kept = three[[c for c in three.columns if "latent" not in c]]
        assert kept.to_csv(index=False, float_format="%.8g") == plain
    summary = pd.read_csv(tmp_path / "three" / "summary.csv")
    assert {"p_latent_de_mean", "p_latent_ru_lo", "p_latent_ru_hi"} <= set(summary.columns)
    assert record["latent"] == ["en", "de", "ru"] and set(record["latent_target_overlap"]) == {"de", "ru"}
    assert not math.isnan(summary["p_latent_de_mean"].iloc[-1])


def test_latent_sets_survive_a_latent_store_and_a_sweep_from_it(tmp_path, tiny_models, fr_zh, spm_tokenizer):
    from llmlatent import latents

    model = tiny_models["gemma3_text"]
    several = add_latent_sets(fr_zh, ("en", "de"), spm_tokenizer)
    store = latents.collect(model, several, tmp_path / "store", batch_size=4)
    assert store.prompts["latent_de_ids"].tolist() == several.df["latent_de_ids"].tolist()
    live = lens.sweep(model, several, progress=False)
    stored = lens.from_latents(latents.load(tmp_path / "store"), model, progress=False)
    assert np.abs(live["p_latent_de"].to_numpy() - stored["p_latent_de"].to_numpy()).max() <= 1e-3  # float16 store
    later = compute(model, SweepSettings(from_latents=str(tmp_path / "store"), latent=("en", "ru")))
    assert "p_latent_ru" in later.rows and "p_latent_de" in later.rows  # sets added to the store's own
