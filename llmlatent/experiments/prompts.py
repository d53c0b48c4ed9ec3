"""Where an experiment's prompts come from: one of four sources, each a small frozen value.

=================  ===========================================================================
``TaskPrompts``    a task (translation, repetition, cloze) over word lists (bundled, or ``words_dir``)
``PromptFile``     a saved prompt CSV in the seed layout (``--prompts``)
``StorePrompts``   the prompts a latent store holds (``--from-latents``)
``GivenPrompts``   a :class:`~llmlatent.tasks.PromptSet` built in Python (``tasks.custom`` …)
=================  ===========================================================================

Each source has ``check()`` (touches its files: existence, parse, languages; one line before the model
loads), ``build(tokenizer) -> PromptSet`` and ``digest()``: a sha256 of what the prompts are built from (the
options and the word files' bytes, the prompt file's bytes, the store's content, the given frame), which the
cache key holds so that a key never builds the prompts. :class:`PromptSettings` holds the flat fields of
the command line (``--task --src --tgt --prompts …``), validates their values alone, and names its source
(:attr:`PromptSettings.source`); its :meth:`~PromptSettings.preflight` runs the source's ``check()``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlatent import checks
from llmlatent.atomic import file_sha256
from llmlatent.errors import DataError
from llmlatent.experiments.settings import Settings, option
from llmlatent.languages.registry import split_codes
from llmlatent.tasks import TASKS, PromptSet

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _sha256(value: Any) -> str:
    """Return the sha256 of ``value`` as canonical JSON (sorted keys)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def words_digest(langs: Iterable[str], words_dir: str | Path | None = None) -> dict[str, dict[str, str]]:
    """Return code → the language's label, answer label and word file sha256, for every code in ``langs``.

    These are everything a prompt builder reads of a language (the labels name the languages in the
    prompts), so the digest changes whenever the built prompts could.
    """
    from llmlatent.languages.registry import get

    out = {}
    for code in dict.fromkeys(langs):
        language = get(code, words_dir)
        out[code] = {"label": language.label, "answer": language.answer, "sha256": file_sha256(language.path)}
    return out


@dataclass(frozen=True)
class TaskPrompts:
    """A task's prompts over word lists: ``tasks.build(task, src, tgt, …)`` (bundled words, or ``words_dir``)."""

    task: str
    src: str
    tgt: str
    n_prompts: int | None = None
    seed: int = 0
    strict: bool = False
    cognate_filter: bool = False
    words_dir: str | None = None

    def check(self) -> None:
        """Return None after checking that both languages exist and, for a ``words_dir``, that its files parse."""
        from llmlatent.languages import words as data
        from llmlatent.languages.registry import check_lang

        check_lang(self.tgt, self.words_dir)
        check_lang(self.src, self.words_dir)
        if self.words_dir:  # empty, non-UTF-8 or duplicate-concept word files fail now, not after the model load
            with checks.quiet(data.log):
                data.read_table(["en", self.src, self.tgt], self.words_dir)

    def build(self, tokenizer: PreTrainedTokenizerBase) -> PromptSet:
        """Return the task's prompt set for ``tokenizer``."""
        from llmlatent import tasks

        return tasks.build(
            self.task,
            self.src,
            self.tgt,
            tokenizer,
            n=self.n_prompts,
            seed=self.seed,
            words_dir=self.words_dir,
            strict=self.strict,
            cognate_filter=self.cognate_filter,
        )

    def digest(self) -> str:
        """Return a sha256 over the task, languages and options and the word files they read."""
        options = {k: getattr(self, k) for k in ("task", "src", "tgt", "n_prompts", "seed", "strict", "cognate_filter")}
        return _sha256({"source": "task", **options, "words": words_digest(["en", self.src, self.tgt], self.words_dir)})

    def meta(self) -> dict:
        """Return what is known of the prompts before they are built: task and target."""
        return {"task": self.task, "tgt": self.tgt}


@dataclass(frozen=True)
class PromptFile:
    """A saved prompt CSV in the seed layout (prompt, out_token_str, latent_token_str[, in_token_str])."""

    path: str
    n_prompts: int | None = None
    seed: int = 0
    strict: bool = False

    def check(self) -> None:
        """Return None after checking that the file exists and parses (its warnings come with the build)."""
        from llmlatent.languages import words as data

        checks.input_file(self.path, "prompts")
        with checks.quiet(data.log):  # an empty, non-UTF-8 or malformed file fails now
            data.read_prompt_file(self.path)

    def build(self, tokenizer: PreTrainedTokenizerBase) -> PromptSet:
        """Return the file's prompt set for ``tokenizer``."""
        from llmlatent import tasks

        return tasks.from_prompt_file(self.path, tokenizer, strict=self.strict, n=self.n_prompts, seed=self.seed)

    def digest(self) -> str:
        """Return a sha256 over the file's bytes and the draw's options."""
        options = {"n_prompts": self.n_prompts, "seed": self.seed, "strict": self.strict}
        return _sha256({"source": "file", "sha256": file_sha256(self.path), **options})

    def meta(self) -> dict:
        """Return what is known of the prompts before they are built: nothing (the file names no task)."""
        return {}


@dataclass(frozen=True)
class StorePrompts:
    """The prompts a latent store holds (its token sets were made for the store's model)."""

    path: str

    def check(self) -> None:
        """Return None after checking that ``path`` is a latent store (its store.json reads)."""
        from llmlatent.latents.format import read_config

        read_config(Path(self.path))

    def build(self, tokenizer: PreTrainedTokenizerBase | None = None) -> PromptSet:
        """Return the store's prompt set (``tokenizer`` is not used: the store holds the sets)."""
        from llmlatent import latents

        return latents.load(self.path, verify=False).prompt_set()

    def digest(self) -> str:
        """Return the store's content digest (store.json and every shard.json, which hold each file's sha256)."""
        from llmlatent.latents.shards import store_digest

        return _sha256({"source": "store", "sha256": store_digest(self.path)})

    def meta(self) -> dict:
        """Return the prompt meta recorded in the store."""
        from llmlatent.latents.format import read_config

        return read_config(Path(self.path))["meta"]


@dataclass(frozen=True)
class GivenPrompts:
    """A prompt set built in Python, used as it is."""

    prompt_set: PromptSet

    def check(self) -> None:
        """Return None after checking that the set holds a prompt (no file to read)."""
        if len(self.prompt_set) == 0:
            raise DataError("the prompt set is empty; build one with at least one prompt")

    def build(self, tokenizer: PreTrainedTokenizerBase | None = None) -> PromptSet:
        """Return the given prompt set."""
        return self.prompt_set

    def digest(self) -> str:
        """Return a sha256 over the set's meta, every prompt and its token-id sets."""
        from llmlatent.provenance import prompts_digest

        return _sha256({"source": "given", "meta": self.prompt_set.meta, "sha256": prompts_digest(self.prompt_set)})

    def meta(self) -> dict:
        """Return the set's meta."""
        return self.prompt_set.meta


PromptSource = TaskPrompts | PromptFile | StorePrompts | GivenPrompts


@dataclass(frozen=True)
class PromptSettings(Settings):
    """Which prompts: a task over word lists (bundled or ``words_dir``), or a saved prompt file (``prompts``)."""

    task: str | None = option(None, "translation, repetition or cloze (default translation)", choices=TASKS)
    src: str | None = option(None, "source language (default fr, or --tgt for repetition); ignored for cloze")
    tgt: str | None = option(None, "target language (default zh)")
    n_prompts: int | None = option(None, "number of prompts (default: all that pass the filters)", aliases=("--n",))
    seed: int = option(0, "seed of the few-shot examples and of the prompt draw")
    strict: bool = option(False, "strict token sets (no 1-character prefixes for alphabetic words)")
    cognate_filter: bool = option(False, "drop concepts whose source and English token sets intersect")
    words_dir: str | None = option(
        None, "folder of word CSVs (bundled or seed layout)", digest=True, aliases=("--words",), key_name="words"
    )
    prompts: str | None = option(
        None, "saved prompt CSV in the seed layout (prompt, out_token_str, latent_token_str)", digest=True
    )
    batch_size: int = option(16, "prompts per forward (does not change the numbers)", key=False)
    latent: tuple[str, ...] = option(
        ("en",), "latent languages: a curve p(concept in L) per layer for each L (en: the paper's p_english)"
    )
    latent_overlap: str = option(
        "mark",
        "concepts whose latent-language set intersects the target's: mark (keep, count) or drop (from that curve)",
        choices=("mark", "drop"),
    )

    def __post_init__(self) -> None:
        self._check_values()
        if self.words_dir and self.prompts:
            self.fail("--words-dir and --prompts exclude each other: a prompt file already holds its words")
        if self.prompts:
            given = [f"--{k.replace('_', '-')}" for k in ("task", "src", "tgt", "cognate_filter") if getattr(self, k)]
            if given:
                self.fail(
                    f"--prompts {self.prompts} already defines the prompts; drop {', '.join(given)} "
                    "(they would be ignored)"
                )
            return
        task = self.task or "translation"
        tgt = self.tgt or "zh"
        src = self.src or ("fr" if task == "translation" else tgt)
        if task == "translation" and src == tgt:
            raise DataError(f"translation needs two different languages (got {tgt}→{tgt}); use --task repetition")
        self._set("task", task)
        self._set("tgt", tgt)
        self._set("src", src)

    def _check_values(self) -> None:
        """Check the fields every source shares (no file is read)."""
        self._set("latent", split_codes(self.latent))
        checks.count(self.n_prompts, "n_prompts", optional=True, flag="--n-prompts")
        checks.count(self.batch_size, "batch_size")

    @property
    def source(self) -> PromptSource:
        """Return the prompt source these settings name."""
        if self.prompts:
            return PromptFile(self.prompts, self.n_prompts, self.seed, self.strict)
        assert self.task and self.src and self.tgt  # filled in by __post_init__
        return TaskPrompts(
            self.task, self.src, self.tgt, self.n_prompts, self.seed, self.strict, self.cognate_filter, self.words_dir
        )

    def preflight(self) -> None:
        """Return None after checking the files: the latent languages, and the source's (:meth:`source` ``.check``)."""
        from llmlatent.languages.registry import parse_codes

        parse_codes(self.latent, self.words_dir, flag="--latent")
        self.source.check()

    def build(self, tokenizer: PreTrainedTokenizerBase) -> PromptSet:
        """Return the prompt set these settings name, for ``tokenizer``, with a set per latent language."""
        from llmlatent.latent_sets import add_latent_sets

        return add_latent_sets(
            self.source.build(tokenizer),
            self.latent,
            tokenizer,
            words_dir=self.words_dir,
            strict=self.strict,
            overlap=self.latent_overlap,
        )

    def prompts_digest(self, tokenizer: PreTrainedTokenizerBase | None) -> dict:
        """Return the cache key's digests of the prompts' inputs (built from nothing: no prompt is made).

        The source's digest, the latent languages' word files (other than English) and, where the build
        tokenizes (a task or a file, or any latent language), the tokenizer's vocabulary sha256.
        """
        from llmlatent.tokens import vocab_sha256

        source = self.source
        inputs: dict[str, Any] = {"prompts_sha256": source.digest()}
        extra = [code for code in self.latent if code != "en"]
        if extra:
            inputs["latent_words"] = words_digest(extra, self.words_dir)
        if tokenizer is not None and (extra or isinstance(source, TaskPrompts | PromptFile)):
            inputs["tokenizer_sha256"] = vocab_sha256(tokenizer)
        return inputs
