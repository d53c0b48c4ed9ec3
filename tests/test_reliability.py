"""Bad input answered with one line before any model load; user files never lost; model-load, interval and batching
edge cases."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import save_model

from llmlatent import atomic, capture, checks, cli, metrics, model
from llmlatent.errors import LlmlatentError, OutputFolderError, UsageError
from llmlatent.experiments import reproduce

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_load(monkeypatch):
    """Make any model load fail the test: every bad input must be answered before it."""

    def fail(args):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(cli, "load_model", fail)


def one_line_error(capsys, argv: list[str], match: str) -> str:
    """Run the CLI, assert exit 2 with one stderr line matching ``match``; return the line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and match in err, err
    return err


# ---------------------------------------------------------------- data loss


@pytest.mark.parametrize("command", ["sweep", "steer"])
def test_unrelated_output_folder_is_refused_and_kept(tmp_path, capsys, no_load, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    one_line_error(capsys, [command, "--out", str(out)], "is not empty and holds no previous result")
    assert (out / "thesis.tex").read_text() == "precious"


def test_cwd_parents_and_home_are_never_replaced(tmp_path, capsys, no_load, monkeypatch):
    work = tmp_path / "home" / "repo"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for out, why in (
        (".", "current directory"),
        ("..", "current directory or one of its parents"),
        (str(tmp_path / "home"), "current directory or one of its parents"),
    ):
        one_line_error(capsys, ["sweep", "--out", out], why)
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, ["sweep", "--out", str(tmp_path / "home")], "your home directory")
    with pytest.raises(OutputFolderError, match="current directory"):
        with atomic.atomic_dir(".", marker="run.json"):
            pass
    assert (work / "keep.txt").exists()


def test_atomic_dir_replaces_only_its_own_kind_with_umask_mode(tmp_path):
    out = tmp_path / "run"
    old_umask = os.umask(0o022)
    try:
        with atomic.atomic_dir(out, marker="run.json") as tmp:
            (tmp / "run.json").write_text("{}")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0700
    with pytest.raises(RuntimeError):  # a failed block keeps the previous result
        with atomic.atomic_dir(out, marker="run.json") as tmp:
            (tmp / "run.json").write_text('{"new": 1}')
            raise RuntimeError("boom")
    assert (out / "run.json").read_text() == "{}"
    with pytest.raises(OutputFolderError, match="holds no previous result"):
        with atomic.atomic_dir(out, marker="best.json"):
            pass
    with atomic.atomic_dir(out, marker="run.json") as tmp:
        (tmp / "run.json").write_text('{"new": 1}')
    assert json.loads((out / "run.json").read_text()) == {"new": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_orphans_of_killed_runs_are_cleaned_but_not_user_or_live_folders(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max (4194304): no such process
    orphan = tmp_path / f".run-pid{dead}-abc"
    live = tmp_path / f".run-pid{os.getpid()}-live"
    users = tmp_path / ".run-backup"
    for folder in (orphan, live, users):
        folder.mkdir()
    with atomic.atomic_dir(tmp_path / "run") as tmp:
        (tmp / "run.json").write_text("{}")
    assert not orphan.exists() and live.exists() and users.exists()


# A writer that enters atomic_dir, writes its result into the temporary folder, says which folder, and blocks until
# it reads a line on stdin (or is killed).
BLOCKED_ATOMIC = r"""
import sys
from llmlatent import atomic
with atomic.atomic_dir(sys.argv[1]) as tmp:
    (tmp / "run.json").write_text(sys.argv[2])
    print(tmp.name, flush=True)
    sys.stdin.readline()
"""


def blocked_writer(out: Path, content: str) -> tuple[subprocess.Popen, Path]:
    """Start a real process blocked inside atomic_dir(out); return it and its temporary folder."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_ATOMIC, str(out), content],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    name = proc.stdout.readline().strip()
    assert name.startswith(f".{out.name}-pid{proc.pid}-"), proc.stderr.read() if not name else name
    return proc, out.parent / name


def test_sigkilled_writers_temp_folder_is_removed_by_the_next_run_a_live_ones_is_not(tmp_path):
    out = tmp_path / "run"
    killed, orphan = blocked_writer(out, '{"killed": 1}')
    live, live_tmp = blocked_writer(out, '{"live": 1}')  # started while the first still runs: nothing is removed
    killed.kill()  # SIGKILL: no finally block runs, the temporary folder stays
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL and orphan.is_dir() and live_tmp.is_dir()
    with atomic.atomic_dir(out) as tmp:  # the next run into the same folder
        (tmp / "run.json").write_text('{"next": 1}')
    assert not orphan.exists(), "the SIGKILLed process's temporary folder was left behind"
    assert live_tmp.is_dir() and (live_tmp / "run.json").read_text() == '{"live": 1}', (
        "a live writer's folder was removed"
    )
    assert json.loads((out / "run.json").read_text()) == {"next": 1}
    _, err = live.communicate("go\n", timeout=60)  # the live writer finishes: its result replaces the previous one
    assert live.returncode == 0, err
    assert json.loads((out / "run.json").read_text()) == {"live": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# A writer that is SIGKILLed between atomic_dir's two renames: the previous result moved aside, the new one not in
# place.
BETWEEN_RENAMES = r"""
import os, sys
from llmlatent import atomic
real = os.replace
def replace(src, dst):
    real(src, dst)
    if str(dst).endswith("-old"):
        print("MOVED", flush=True)
        sys.stdin.readline()
os.replace = replace
with atomic.atomic_dir(sys.argv[1]) as tmp:
    (tmp / "run.json").write_text('{"new": 1}')
"""


def test_previous_result_survives_a_kill_between_the_renames(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"previous": 1}')
    proc = subprocess.Popen(
        [sys.executable, "-c", BETWEEN_RENAMES, str(out)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    proc.kill()
    _, err = proc.communicate()
    assert line == "MOVED\n", err
    assert not out.exists() and (tmp_path / f".run-pid{proc.pid}-old").is_dir()
    with pytest.raises(RuntimeError, match="boom"):  # the next run fails: the previous result must still be there
        with atomic.atomic_dir(out):
            raise RuntimeError("boom")
    assert json.loads((out / "run.json").read_text()) == {"previous": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ---------------------------------------------------------------- errors and the CLI


def test_only_domain_errors_become_one_line(monkeypatch, capsys, tmp_path):
    def bug(args):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(cli, "load_model", bug)
    with pytest.raises(RuntimeError, match="a real bug"):  # keeps its traceback
        cli.main(["lens", "hello"])

    def domain(args):
        raise model.ModelLoadError("cannot load model 'x': fix it")

    monkeypatch.setattr(cli, "load_model", domain)
    one_line_error(capsys, ["lens", "hello"], "cannot load model 'x'")
    for argv in (["-v", "lens", "hello"], ["lens", "hello", "-v"]):  # -v after the subcommand too
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.strip().endswith("error: cannot load model 'x': fix it")


def test_every_error_class_derives_from_the_base():
    from llmlatent import latents
    from llmlatent.languages import words as data
    from llmlatent.steering import vector as steering

    for cls in (
        UsageError,
        OutputFolderError,
        data.DataError,
        model.ModelLoadError,
        latents.LatentStoreError,
        latents.FingerprintMismatch,
        steering.SteeringError,
    ):
        assert issubclass(cls, LlmlatentError) and issubclass(cls, ValueError)


def test_the_error_classes_are_the_few_domains():
    """A new error class names a new domain, not one module's errors: the CLI prints them all as one line."""
    import ast

    package = Path(model.__file__).parent
    found = {
        node.name
        for path in package.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Mismatch"))
    }
    domains = {"LlmlatentError", "UsageError", "DataError", "ModelLoadError", "OutputFolderError", "SteeringError"}
    assert found == domains | {"LatentStoreError", "FingerprintMismatch"}, sorted(found)


def test_ctrl_c_is_one_line_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_model", interrupted)
    assert cli.main(["lens", "hello"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("interrupted") and "rerun the same command" in err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["sweep", "--n", "-3"], "n_prompts (--n-prompts) must be at least 1, got -3"),
        (["sweep", "--n", "0"], "n_prompts (--n-prompts) must be at least 1, got 0"),
        (["sweep", "--batch-size", "0"], "batch_size (--batch-size) must be at least 1, got 0"),
        (["sweep", "--batch-size", "-2"], "batch_size (--batch-size) must be at least 1, got -2"),
        (["cache", "--n-prompts", "0"], "n_prompts (--n-prompts) must be at least 1, got 0"),
        (["cache", "--shard-size", "0"], "shard_size (--shard-size) must be at least 1, got 0"),
        (["steer", "--n-concepts", "1"], "n_concepts (--n-concepts) must be at least 3, got 1"),
        (["steer", "--batch-size", "0"], "batch_size (--batch-size) must be at least 1"),
        (["reproduce", "--n", "-1"], "n_prompts (--n-prompts) must be at least 1, got -1"),
        (["lens", "hi", "-k", "0"], "-k must be at least 1, got 0"),
        (["lens", "   "], "the prompt is empty"),
        (["sweep", "--prompts", "{tmp}", "--out", "{tmp}/o"], "is a folder; pass a file"),
        (["sweep", "--prompts", "{tmp}/missing.csv", "--out", "{tmp}/o"], "does not exist"),
        (
            ["sweep", "--prompts", "{tmp}/p.csv", "--src", "de", "--out", "{tmp}/o"],
            "drop --src (they would be ignored)",
        ),
        (
            ["sweep", "--prompts", "{tmp}/p.csv", "--task", "cloze", "--tgt", "fr", "--out", "{tmp}/o"],
            "drop --task, --tgt",
        ),
        (["sweep", "--out", "{tmp}/p.csv"], "is an existing file"),
        (["cache", "--out", "{tmp}/p.csv"], "is an existing file"),
        (["lens", "hi", "--out", "{tmp}"], "is a folder; pass a file path"),
        (["lens", "hi", "--out", "{tmp}/no/such/t.csv"], "does not exist; create it"),
    ],
)
def test_bad_arguments_fail_before_the_model_load(tmp_path, capsys, no_load, argv, match):
    (tmp_path / "p.csv").write_text("prompt,out_token_str,latent_token_str\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--out" not in argv and argv[0] in ("sweep", "cache", "steer"):
        argv += ["--out", str(tmp_path / "new")]
    one_line_error(capsys, argv, match)


def one_exact_line(capsys, argv: list[str], line: str) -> None:
    """Run the CLI, assert exit 2 and exactly ``line`` on stderr."""
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == line + "\n"


def word_folder(tmp_path: Path, fr: bytes) -> Path:
    """Return a copy of the bundled en/fr/zh word lists with ``fr.csv`` replaced by ``fr``."""
    from llmlatent.languages import registry as languages

    folder = tmp_path / "words"
    folder.mkdir()
    for lang in ("en", "zh"):
        (folder / f"{lang}.csv").write_bytes((languages.words_dir() / f"{lang}.csv").read_bytes())
    (folder / "fr.csv").write_bytes(fr)
    return folder


HEADER = "concept,word,cloze_masked,cloze_filled\n"
CAFE = 'café,café,"Un ___.","Un café."\n'


@pytest.mark.parametrize("command", ["sweep", "cache"])
@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "{f}: the file is empty; it needs a header row and at least one data row"),
        ((HEADER + CAFE).encode("cp1252"), "{f}: not UTF-8 text (byte 0xE9 at position {pos}); save it as UTF-8"),
        (
            (HEADER + 'cloud,nuage,"Un ___.","Un nuage."\ncloud,brume,"Une ___.","Une brume."\n').encode(),
            "{f}: concept 'cloud' appears on lines 2, 3 with different rows ('nuage', 'brume'); "
            "keep one row per concept",
        ),
    ],
)
def test_bad_word_csv_fails_before_the_model_load(tmp_path, capsys, no_load, command, content, message):
    folder = word_folder(tmp_path, content)
    one_exact_line(
        capsys,
        [command, "--words", str(folder), "--out", str(tmp_path / "o")],
        "error: " + message.format(f=folder / "fr.csv", pos=content.find(b"\xe9")),
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["sweep", "cache"])
@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "{f}: the file is empty; it needs a header row and at least one data row"),
        (
            'prompt,out_token_str,latent_token_str\n"Français: ""café"" - ",café,coffee\n'.encode("cp1252"),
            "{f}: not UTF-8 text (byte 0xE7 at position {pos}); save it as UTF-8",
        ),
        (b"prompt,out_token_str,latent_token_str\n", "{f}: a header but no data rows"),
        (
            b"prompt,answer\nhello,world\n",
            "{f}: missing column(s) out_token_str, latent_token_str (expected prompt, out_token_str, latent_token_str)",
        ),
    ],
)
def test_bad_prompt_csv_fails_before_the_model_load(tmp_path, capsys, no_load, command, content, message):
    (tmp_path / "p.csv").write_bytes(content)
    one_exact_line(
        capsys,
        [command, "--prompts", str(tmp_path / "p.csv"), "--out", str(tmp_path / "o")],
        "error: " + message.format(f=tmp_path / "p.csv", pos=content.find(b"\xe7")),
    )


def test_cache_into_a_store_with_corrupt_store_json(tmp_path, capsys, no_load):
    (tmp_path / "s" / "shards").mkdir(parents=True)
    (tmp_path / "s" / "store.json").write_text('{"format": "llmlatent-lat')
    from llmlatent.latents.format import REPAIR_HINT

    one_exact_line(
        capsys,
        ["cache", "--out", str(tmp_path / "s")],
        f"error: store.json of the latent store {tmp_path / 's'} is not valid JSON; {REPAIR_HINT}",
    )
    assert (tmp_path / "s" / "store.json").read_text() == '{"format": "llmlatent-lat'  # nothing touched


def test_cache_info_on_damaged_stores(tiny_models, tmp_path, capsys):
    from llmlatent import latents, tasks

    m = tiny_models["llama"]
    path = tmp_path / "s"
    latents.collect(m, tasks.build("translation", "fr", "zh", m.tokenizer, n=4), path, shard_size=1, progress=False)
    arrows = [next((path / "shards" / f"{k:05d}").glob("*.arrow")) for k in range(4)]
    size = arrows[0].stat().st_size
    arrows[0].write_bytes(arrows[0].read_bytes()[:-50])  # truncated
    flipped = bytearray(arrows[1].read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # byte-flipped, same size
    arrows[1].write_bytes(bytes(flipped))
    (path / "shards" / "00002" / "shard.json").unlink()
    rerun = "; rerun the same cache command to recompute it"
    for extra, problems in (
        (
            [],
            {
                "0": f"{arrows[0].name} has {size - 50} bytes, expected {size}{rerun}",
                "1": f"{arrows[1].name} does not match its sha256{rerun}",
                "2": f"shard.json is missing{rerun}",
            },
        ),
        (
            ["--no-verify"],
            {
                "0": f"{arrows[0].name} has {size - 50} bytes, expected {size}{rerun}",
                "2": f"shard.json is missing{rerun}",
            },
        ),  # the byte flip needs the sha256
    ):
        assert cli.main(["cache-info", str(path), *extra]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["complete"] is False and info["shards_done"] == 4 and info["problems"] == problems
    with pytest.raises(latents.LatentStoreError, match="corrupt shard 0"):
        latents.load(path)


def test_read_only_parent_is_refused(tmp_path, capsys, no_load, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real(p, mode))
    (tmp_path / "ro").mkdir()
    one_line_error(capsys, ["sweep", "--out", str(tmp_path / "ro" / "run")], "is not writable")
    with pytest.raises(UsageError, match="not writable"):
        checks.output_file(tmp_path / "ro" / "t.csv", "out")


def test_lens_k_beyond_the_vocabulary(tiny_models, monkeypatch, capsys):
    m = tiny_models["llama"]
    monkeypatch.setattr(cli, "load_model", lambda args: m)
    one_line_error(capsys, ["lens", "Bonjour", "-k", "1000000"], f"-k must be at most {m.unembedding.vocab_size}")


def test_reproduce_passes_load_options(monkeypatch):
    seen = {}

    def fake_load(args):
        from llmlatent.experiments.settings import ModelOptions, from_args

        seen["options"] = from_args(ModelOptions, args)
        return "the model"

    def fake_steps(settings, m, force=False):
        seen.update(settings=settings, model=m)
        return {"runs": 0, "figures": [], "seconds": 0.0}

    monkeypatch.setattr(cli, "load_model", fake_load)
    monkeypatch.setattr(reproduce, "run_steps", fake_steps)
    argv = [
        "reproduce",
        "--model",
        "m",
        "--dtype",
        "bfloat16",
        "--device",
        "cpu",
        "--device-map",
        "auto",
        "--trust-remote-code",
        "--n",
        "3",
    ]
    assert cli.main(argv) == 0
    options = seen["options"]
    assert (options.model, options.dtype, options.device, options.device_map) == ("m", "bfloat16", "cpu", "auto")
    assert options.trust_remote_code and seen["model"] == "the model" and seen["settings"].n_prompts == 3


# ---------------------------------------------------------------- model loading


@pytest.fixture(scope="module")
def saved_gpt2(tiny_models, tmp_path_factory):
    return save_model(tiny_models["gpt2"], tmp_path_factory.mktemp("gpt2"))


def test_model_load_errors_are_one_line(saved_gpt2, tmp_path):
    import shutil

    bad = tmp_path / "badconfig"
    shutil.copytree(saved_gpt2, bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(model.ModelLoadError, match=r"cannot read .*config\.json .*save the model again"):
        model.load(bad, device="cpu")
    noweights = tmp_path / "noweights"
    shutil.copytree(saved_gpt2, noweights)
    (noweights / "model.safetensors").unlink()
    with pytest.raises(model.ModelLoadError, match="has config.json but no weights"):
        model.load(noweights, device="cpu")
    truncated = tmp_path / "truncated"
    shutil.copytree(saved_gpt2, truncated)
    blob = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(model.ModelLoadError, match="truncated or corrupt"):
        model.load(truncated, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(model.ModelLoadError, match="has no config.json"):
        model.load(tmp_path / "empty", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-build message")
def test_cuda_device_on_a_cpu_build():
    with pytest.raises(model.ModelLoadError, match=r"--device cuda:7: CUDA is not available.*--device cpu"):
        model.load("never-loaded", device="cuda:7")
    with pytest.raises(model.ModelLoadError, match="is not a device name"):
        model.check_device("gpu0")


def test_read_only_cache_says_set_llmlatent_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == cache else real(p, mode))
    with pytest.raises(model.ModelLoadError, match="set LLMLATENT_CACHE to a writable folder"):
        model.default_model_path(cache)


# ---------------------------------------------------------------- intervals


def test_intervals_nan_for_one_prompt_and_clipped(caplog):
    one = pd.DataFrame(
        {
            "prompt_id": [0, 0],
            "layer": [0, 1],
            "p_target": [0.2, 0.3],
            "p_english": [0.1, 0.1],
            "p_source": np.nan,
            "entropy": [1.0, 2.0],
            "energy": [0.5, 0.5],
        }
    )
    with caplog.at_level(logging.WARNING, logger="llmlatent.metrics"):
        s = metrics.summarize(one)
    assert s["p_target_lo"].isna().all() and s["p_target_hi"].isna().all()  # no zero-width "interval"
    assert "undefined" in caplog.text
    b = metrics.summarize(one, ci="bootstrap")
    assert b["p_target_lo"].isna().all()
    skewed = pd.DataFrame(
        {
            "prompt_id": range(4),
            "layer": 0,
            "p_target": [0.0, 0.0, 0.0, 1.0],
            "p_english": [1.0, 1.0, 1.0, 0.0],
            "p_source": np.nan,
            "entropy": 1.0,
            "energy": 1.0,
        }
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmlatent.metrics"):
        s = metrics.summarize(skewed)
    assert "unreliable below 10" in caplog.text
    assert s.loc[0, "p_target_lo"] == 0.0 and s.loc[0, "p_english_hi"] == 1.0  # clipped, not -0.24 / 1.24
    assert math.isclose(s.loc[0, "p_target_hi"], 0.25 + 1.96 * 0.5 / 2)


def test_dead_metrics_helpers_are_gone():
    assert not hasattr(metrics, "entropy_bits") and not hasattr(metrics, "METRICS")


# ---------------------------------------------------------------- batching and reproduce


def test_batches_are_length_bucketed(tiny_models):
    m = tiny_models["llama"]
    short = ["Bonjour le monde", "Salut tout le monde"]
    long = " ".join(["nuage"] * 400)
    batches = capture.length_batches(m, [long, *short], batch_size=16)
    assert sorted(map(sorted, batches)) == [[0], [1, 2]]  # the two short prompts are not padded to the long one
    similar = [f'Français: "mot{i}" - 中文: "' for i in range(5)]
    pairs = capture.length_batches(m, similar, batch_size=2)
    assert [len(b) for b in pairs] == [2, 2, 1] and sorted(i for b in pairs for i in b) == list(range(5))
    assert sum(len(b) for b in capture.length_batches(m, similar, batch_size=16)) == 5
    assert len(capture.length_batches(m, similar, batch_size=16)) == 1
    with pytest.raises(UsageError, match="batch_size"):
        capture.length_batches(m, similar, batch_size=0)


def test_user_sweep_folder_does_not_break_reproduce_summaries(tmp_path):
    summary = pd.DataFrame(
        {"layer": [0, 1], "p_target_mean": [0.1, 0.2], "p_english_mean": [0.3, 0.1], "p_source_mean": [np.nan, np.nan]}
    )
    run = {
        "cache_key": {"kind": "sweep"},
        "task": "translation",
        "src": "fr",
        "tgt": "zh",
        "n_prompts": 3,
        "peak_english": {"layer": 0, "value": 0.3},
        "p_source_at_peak": None,
        "final_target": {"layer": 1, "value": 0.2},
        "final_english": 0.1,
    }
    for name in ("fr-zh", "fr-zh-strict"):
        folder = tmp_path / "translation" / name
        folder.mkdir(parents=True)
        summary.assign(p_target_mean=summary["p_target_mean"] * (2 if "strict" in name else 1)).to_csv(
            folder / "summary.csv", index=False
        )
        (folder / "run.json").write_text(json.dumps(run))
    (tmp_path / "translation" / "notes").mkdir()
    (tmp_path / "translation" / "notes" / "summary.csv").write_text("layer\n0\n")
    (tmp_path / "patching" / "fr-zh").mkdir(parents=True)
    (tmp_path / "patching" / "fr-zh" / "run.json").write_text(json.dumps({"kind": "patching"}))
    loaded = reproduce.load_summaries(tmp_path, "translation")
    assert list(loaded) == [("fr", "zh")] and loaded[("fr", "zh")]["p_target_mean"].tolist() == [0.1, 0.2]
    assert len(reproduce.pivot_table(tmp_path)) == 1  # only the folders reproduce writes: fr-zh-strict is the user's


def test_latent_shards_get_the_umask_mode(tiny_models, tmp_path):
    from llmlatent import latents, tasks

    m = tiny_models["llama"]
    old_umask = os.umask(0o022)
    try:
        latents.collect(m, tasks.build("translation", "fr", "zh", m.tokenizer, n=2), tmp_path / "s", progress=False)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "s" / "shards" / "00000").stat().st_mode) == 0o755
