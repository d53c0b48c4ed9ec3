"""Prompt sources (task, file, store, given): check touches the files, build makes the set, digest keys it unbuilt."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from llmlatent import latents, tasks
from llmlatent.errors import DataError, LlmlatentError
from llmlatent.experiments import runs
from llmlatent.experiments.prompts import GivenPrompts, PromptFile, StorePrompts, TaskPrompts
from llmlatent.experiments.sweep import SweepSettings, paper_lines
from llmlatent.languages import registry
from llmlatent.latents.format import LatentStoreError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_build(monkeypatch):
    """Make every way of building prompts fail: a digest or a cache key that builds the prompts fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the prompts were built")

    for name in ("build", "from_prompt_file"):
        monkeypatch.setattr(tasks, name, refuse)
    monkeypatch.setattr(latents, "load", refuse)


@pytest.fixture(scope="module")
def store(tiny_models, tmp_path_factory):
    model = tiny_models["llama"]
    prompts = tasks.build("translation", "fr", "zh", model.tokenizer, n=3, seed=0)
    return latents.collect(model, prompts, tmp_path_factory.mktemp("store") / "s", progress=False)


def prompt_file(path, rows=(('Français: "nuage" - 中文: "', "云", "cloud"),)):
    frame = pd.DataFrame(rows, columns=["prompt", "out_token_str", "latent_token_str"])
    frame.to_csv(path, index=False)
    return str(path)


def test_task_prompts_check_build_and_digest(spm_tokenizer, tmp_path, monkeypatch):
    source = TaskPrompts("translation", "fr", "zh", n_prompts=4, seed=1)
    source.check()
    built = source.build(spm_tokenizer)
    assert built.prompts == tasks.build("translation", "fr", "zh", spm_tokenizer, n=4, seed=1).prompts
    with pytest.raises(DataError, match="unknown language 'xx'"):
        TaskPrompts("translation", "xx", "zh").check()
    words = tmp_path / "langs"
    shutil.copytree(registry.words_dir(), words)
    same = TaskPrompts("translation", "fr", "zh", n_prompts=4, seed=1, words_dir=str(words))
    assert same.digest() == same.digest()
    assert TaskPrompts("translation", "fr", "zh", n_prompts=4, seed=2).digest() != source.digest()
    before = same.digest()
    (words / "zh.csv").write_text((words / "zh.csv").read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert same.digest() != before  # the word files' bytes enter the digest
    before = same.digest()
    (words / "languages.csv").write_text("code,label,answer\nzh,汉语,答案\n", encoding="utf-8")
    assert same.digest() != before  # and the labels the prompts show
    (words / "fr.csv").write_bytes(b"")
    with pytest.raises(DataError, match="fr.csv: the file is empty"):
        same.check()


def test_prompt_file_check_build_and_digest(spm_tokenizer, tmp_path):
    source = PromptFile(prompt_file(tmp_path / "p.csv"))
    source.check()
    assert source.build(spm_tokenizer).prompts == tasks.from_prompt_file(source.path, spm_tokenizer).prompts
    before = source.digest()
    assert PromptFile(source.path, seed=1).digest() != before
    prompt_file(tmp_path / "p.csv", (('Deutsch: "Wolke" - 中文: "', "云", "cloud"),))
    assert source.digest() != before  # the file's bytes
    with pytest.raises(LlmlatentError, match="does not exist"):
        PromptFile(str(tmp_path / "missing.csv")).check()
    (tmp_path / "p.csv").write_text("prompt,answer\nhello,world\n", encoding="utf-8")
    with pytest.raises(DataError, match="missing column"):
        source.check()


def test_store_prompts_check_build_and_digest(store, tmp_path):
    source = StorePrompts(str(store.path))
    source.check()
    assert source.build().prompts == store.prompt_set().prompts
    assert source.meta()["tgt"] == "zh" and source.digest() == StorePrompts(str(store.path)).digest()
    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    assert StorePrompts(str(copy)).digest() == source.digest()  # content, not path
    with pytest.raises(LatentStoreError):
        StorePrompts(str(tmp_path)).check()


def test_given_prompts_check_build_and_digest(spm_tokenizer):
    prompts = tasks.build("translation", "fr", "zh", spm_tokenizer, n=3, seed=0)
    source = GivenPrompts(prompts)
    source.check()
    assert source.build() is prompts and source.meta() == prompts.meta
    other = tasks.build("translation", "fr", "zh", spm_tokenizer, n=3, seed=1)
    assert GivenPrompts(other).digest() != source.digest()
    with pytest.raises(DataError, match="the prompt set is empty"):
        GivenPrompts(tasks.PromptSet(prompts.df.iloc[:0], meta=prompts.meta)).check()


def test_settings_name_their_source():
    assert SweepSettings(task="translation", src="fr", tgt="zh", n_prompts=50).source == TaskPrompts(
        "translation", "fr", "zh", 50
    )
    assert SweepSettings(task="repetition", tgt="ru").source == TaskPrompts("repetition", "ru", "ru")
    assert SweepSettings(prompts="p.csv", seed=2).source == PromptFile("p.csv", seed=2)
    assert SweepSettings(from_latents="s").source == StorePrompts("s")


def test_settings_read_no_file_until_preflight(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a file was read")

    with monkeypatch.context() as patched:
        patched.setattr(registry, "registry", refuse)
        settings = SweepSettings(task="translation", src="xx", tgt="zh", latent="en,qq", words_dir=str(tmp_path))
        missing = SweepSettings(prompts=str(tmp_path / "missing.csv"))
        store = SweepSettings(from_latents=str(tmp_path))
    assert settings.latent == ("en", "qq")
    with pytest.raises(DataError, match="unknown language 'qq'"):
        settings.preflight()
    with pytest.raises(DataError, match="unknown language 'xx'"):
        settings.replace(latent=("en",)).preflight()
    with pytest.raises(LlmlatentError, match="does not exist"):
        missing.preflight()
    with pytest.raises(LatentStoreError):
        store.preflight()
    with pytest.raises(DataError, match="unknown language 'xx'"):  # runs.run checks before any work
        runs.run(settings.replace(latent=("en",)), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("latent", [("en",), ("en", "de")], ids=["en", "en+de"])
def test_the_cache_key_never_builds_the_prompts(tiny_models, store, tmp_path, no_build, latent):
    model = tiny_models["llama"]
    sources = [
        {"task": "translation", "src": "fr", "tgt": "zh", "n_prompts": 3},
        {"prompts": prompt_file(tmp_path / "p.csv")},
        {"from_latents": str(store.path)},
    ]
    for source in sources:
        settings = SweepSettings(**source, latent=latent)
        key = runs.key_of(settings, model)
        assert runs.key_of(settings, model) == key
        assert runs.key_of(settings.replace(seed=1), model) != key
        assert ("latent_words" in key["settings"]) == (latent != ("en",))


def test_the_key_changes_with_the_tokenizer(tiny_models, bpe_tokenizer, no_build):
    from types import SimpleNamespace

    model = tiny_models["llama"]
    settings = SweepSettings(task="translation", src="fr", tgt="zh", n_prompts=3)
    other = SimpleNamespace(hf=model.hf, fingerprint=model.fingerprint, tokenizer=bpe_tokenizer)
    assert runs.key_of(settings, other) != runs.key_of(settings, model)


def test_the_paper_lines_are_read_once_per_content(tiny_models, tmp_path, monkeypatch):
    from llmlatent.experiments.figures import geometry

    folder = tmp_path / "paper" / geometry.PAPER_LINES
    folder.mkdir(parents=True)
    rows = ["entropy,energy,en,zh"] + [f"{10 - i},0.25,0.{i},0.0{i}" for i in range(8)]
    (folder / "7b_zh_lines.csv").write_text("\n".join(rows) + "\n")
    reads = []
    read = geometry.read_paper_lines
    monkeypatch.setattr(geometry, "read_paper_lines", lambda repo: reads.append(repo) or read(repo))
    settings = SweepSettings(task="translation", src="fr", tgt="zh", n_prompts=3, paper_repo=str(tmp_path / "paper"))
    settings.preflight()
    key = runs.key_of(settings, tiny_models["llama"])
    assert paper_lines(settings.paper_repo)[0].keys() == {"7b"} and len(reads) == 1
    (folder / "13b_zh_lines.csv").write_text("\n".join(rows) + "\n")  # new content: read again, another key
    assert runs.key_of(settings, tiny_models["llama"]) != key and len(reads) == 2
