"""The command line is generated from the settings dataclasses: one flag per field, defaults only in the dataclass."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from llmlatent import cli
from llmlatent.experiments.patching import PatchSettings
from llmlatent.experiments.reproduce import ReproduceSettings
from llmlatent.experiments.settings import ModelOptions, add_flags, flag_name, from_args
from llmlatent.experiments.steering.bench.plan import SteerBenchSettings
from llmlatent.experiments.steering.plan import SteeringSettings
from llmlatent.experiments.sweep import SweepSettings

COMMANDS = {"sweep": SweepSettings, "steer": SteeringSettings, "patch": PatchSettings, "reproduce": ReproduceSettings}
COMMANDS["steer-bench"] = SteerBenchSettings


def subparser(command: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_field_has_its_flag_and_no_default_of_its_own(command):
    cls, p = COMMANDS[command], subparser(command)
    flags = set(p._option_string_actions)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        name = flag_name(f.name)
        assert name in flags or flag_name("no_" + f.name) in flags, f.name
        assert set(f.metadata.get("aliases", ())) <= flags
    for f in dataclasses.fields(ModelOptions):
        assert flag_name(f.name) in flags
    assert "--force" in flags
    given = ["--out", "x"] if command != "reproduce" else []
    assert from_args(cls, p.parse_args(given)) == cls()  # nothing given: exactly the dataclass defaults


def test_old_spellings_and_named_counts_reach_the_same_fields(tmp_path):
    w = str(tmp_path)  # an existing (empty) words folder: the bundled languages are used
    steer = subparser("steer").parse_args(
        ["--out", "x", "--words-dir", w, "--latents", "s", "--generate", "2", "--random", "1", "--flip-prompts", "3",
         "--no-flip", "--layers", "5,7", "9", "--wrong-pair", "de", "ru"]
    )  # fmt: skip
    s = from_args(SteeringSettings, steer)
    assert (s.words_dir, s.latents_dir, s.n_generate, s.n_random, s.n_flip, s.flip) == (w, "s", 2, 1, 3, False)
    assert s.layers == (5, 7, 9) and s.wrong_pair == ("de", "ru")
    for command, field in (("sweep", "n_prompts"), ("patch", "n_pairs"), ("reproduce", "n_prompts")):
        given = ["--n", "7"] + (["--out", "x"] if command != "reproduce" else [])
        assert getattr(from_args(COMMANDS[command], subparser(command).parse_args(given)), field) == 7
    patch = from_args(
        PatchSettings, subparser("patch").parse_args(["--out", "x", "--donor", "en:de", "--mean-over", "none"])
    )
    assert patch.donor == ("en", "de") and patch.mean_over == ()


@pytest.mark.parametrize("command", ["sweep", "cache", "patch", "steer", "steer-bench", "detour", "reproduce"])
def test_one_name_per_concept_and_the_old_spellings_still_parse(command, tmp_path):
    """words_dir and latents_dir in every settings class; --words, --store-dir, --latents, --n keep working."""
    from llmlatent.experiments.cache import CacheSettings
    from llmlatent.experiments.detour import DetourSettings

    cls = {**COMMANDS, "cache": CacheSettings, "detour": DetourSettings}[command]
    names = {f.name for f in dataclasses.fields(cls)}
    assert "words_dir" in names and not names & {"words", "store_dir", "latents", "n"}
    out = ["--out", str(tmp_path / "o")] if command != "reproduce" else []
    for flag in ("--words", "--words-dir"):
        given = from_args(cls, subparser(command).parse_args([*out, flag, str(tmp_path)]))
        assert given.words_dir == str(tmp_path)
    if "latents_dir" in names:
        for flag in ("--latents", "--store-dir", "--latents-dir"):
            assert from_args(cls, subparser(command).parse_args([*out, flag, "s"])).latents_dir == "s"
    counts = [
        n for n in ("n_prompts", "n_pairs") if n in names and "--n" in cls.__dataclass_fields__[n].metadata["aliases"]
    ]
    for field in counts:
        assert getattr(from_args(cls, subparser(command).parse_args([*out, "--n", "7"])), field) == 7


def test_a_renamed_field_keeps_its_old_name_in_the_cache_key(tmp_path):
    """Results written before words became words_dir are still reused: the key holds the field's old name."""
    settings = PatchSettings(words_dir=str(tmp_path))
    assert "words" in settings.key_fields() and "words_dir" not in settings.key_fields()
    assert "words_dir" in settings.to_dict()  # the record names the field as it is now


def test_a_new_field_gets_a_flag_without_touching_the_cli():
    @dataclasses.dataclass(frozen=True)
    class Extra(SweepSettings):
        latent_langs: tuple[str, ...] = dataclasses.field(default=("en",), metadata={"help": "latent languages"})

    p = argparse.ArgumentParser()
    add_flags(p, Extra)
    assert from_args(Extra, p.parse_args(["--latent-langs", "en,fr", "zh"])).latent_langs == ("en", "fr", "zh")


@pytest.mark.parametrize("command", ["patch", "reproduce"])
def test_too_few_pairs_names_the_flag_given(command, tmp_path, capsys):
    from llmlatent.cli import main

    out = ["--out", str(tmp_path / "o")] if command == "patch" else ["--results", str(tmp_path / "o")]
    assert main([command, "--n-pairs", "1", *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --n-pairs must be at least 2 pairs (95% intervals need two), got 1", err
    assert not (tmp_path / "o").exists()


def test_the_cli_offers_exactly_the_experiment_list():
    """One subcommand per entry of experiments.EXPERIMENTS (plus reproduce and cache-info), each complete."""
    from llmlatent.experiments import EXPERIMENTS, runs
    from llmlatent.experiments.base import Experiment

    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = [entry.command for entry in EXPERIMENTS]
    assert len(set(commands)) == len(commands)
    assert set(sub.choices) == {*commands, "reproduce", "cache-info"}
    experiments = [entry for entry in EXPERIMENTS if isinstance(entry, Experiment)]
    assert {e.command for e in experiments} == {"sweep", "steer", "patch", "detour", "steer-bench", "geometry"}
    assert len({e.kind for e in experiments}) == len({e.settings for e in experiments}) == len(experiments)
    for entry in EXPERIMENTS:
        assert entry.command and entry.help and dataclasses.is_dataclass(entry.settings), entry
        assert sub.choices[entry.command].get_default("entry") is entry
    for e in experiments:
        assert isinstance(e.format_version, int) and e.format_version >= 1, e.kind
        assert runs.experiment_of(e.settings.__new__(e.settings)) is e  # run finds it through the list
    # old result folders stay valid: these numbers enter every cache key (bump one only with a format change)
    versions = {e.kind: e.format_version for e in experiments}
    assert versions == {"sweep": 3, "steering": 3, "patching": 3, "detour": 1, "steerbench": 1, "geometry": 1}


def test_lens_keeps_its_spellings():
    from llmlatent.experiments.lens import LensSettings

    p = subparser("lens")
    flags = set(p._option_string_actions)
    assert {"-k", "--out", "--no-escapes", "--generate", "--figure", "--colour", "--langs", "--concepts"} <= flags
    assert p._option_string_actions["--generate"].metavar == "N"
    plain = from_args(LensSettings, p.parse_args(["Bonjour\\n"]))
    assert plain == LensSettings(prompt="Bonjour\\n") and plain.text == "Bonjour\n" and plain.k == 5
    given = ["a\\nb", "-k", "3", "--no-escapes", "--generate", "2", "--colour", "p_fr", "--langs", "en,fr"]
    s = from_args(LensSettings, p.parse_args([*given, "--concepts", "cat", "--out", "x.csv"]))
    assert (s.text, s.k, s.generate, s.colour, s.languages(), s.concept_list()) == (
        "a\\nb",
        3,
        2,
        "p_fr",
        ("en", "fr"),
        ["cat"],
    )
    assert s.figure_path() == "x" and LensSettings(prompt="a", figure="f", out="x.csv").figure_path() == "f"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["  "], "the prompt is empty"),
        (["hi", "-k", "0"], "-k"),
        (["hi", "-k", "two"], "-k must be an integer"),
        (["hi", "--out", "."], "is a folder"),
        (["hi", "--out", "no/such/folder/t.csv"], "does not exist"),
        (["hi", "--generate", "-1"], "--generate"),
        (["hi", "--generate", "2", "--langs", "en,xx"], "xx"),
        (["hi", "--generate", "2", "--colour", "p_zh", "--langs", "en,fr"], "--colour must be probability or p_<lang>"),
        (["hi", "--generate", "2", "--concepts", "nosuchconcept"], "unknown concept"),
    ],
)
def test_lens_flags_are_checked_before_the_model_loads(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_model", lambda args: pytest.fail("the model must not load"))
    assert cli.main(["lens", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
