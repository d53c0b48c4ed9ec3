"""Latent cache: round trip, lens from cache = live sweep, unembedding-only loading, resume, torchrun, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import FAMILIES, save_model

from llmlatent import capture, latents, model, tasks
from llmlatent.adapter import Fingerprint, LoadedHead
from llmlatent.cli import main
from llmlatent.errors import UsageError
from llmlatent.lens import last_token as lens
from llmlatent.lens.base import of

ROOT = Path(__file__).resolve().parents[2]
NUMERIC = ["p_target", "p_english", "p_source", "entropy", "energy", "top_prob"]
# float16 storage rounds each latent to 11 significant bits: the paper's set probabilities stay within
# 1e-3 of the live sweep; the top token's probability and the entropy (bits) move slightly more.
FLOAT16_TOL = {"p_target": 1e-3, "p_english": 1e-3, "p_source": 1e-3, "top_prob": 2e-3, "entropy": 0.05, "energy": 1e-3}


def prompt_set(m, n=6):
    return tasks.build("translation", "fr", "zh", m.tokenizer, n=n)


def differences(live: pd.DataFrame, cached: pd.DataFrame) -> dict[str, float]:
    """Return the max absolute difference per numeric column after checking both frames' rows and columns agree."""
    assert list(cached.columns) == list(live.columns)
    pd.testing.assert_frame_equal(cached[["prompt_id", "layer"]], live[["prompt_id", "layer"]])
    assert cached[NUMERIC].isna().equals(live[NUMERIC].isna())
    return {c: float((live[c] - cached[c]).abs().max()) for c in NUMERIC if live[c].notna().any()}


def assert_float16_agreement(live: pd.DataFrame, cached: pd.DataFrame, min_top_agreement: float) -> dict[str, float]:
    """Assert a float16 cache's frame is within FLOAT16_TOL of the live sweep; return the differences."""
    diff = differences(live, cached)
    assert all(diff[c] <= FLOAT16_TOL[c] for c in diff), (
        f"lens from the float16 cache differs from the live sweep: {diff}"
    )
    assert (live["top_token"] == cached["top_token"]).mean() >= min_top_agreement
    return diff


def count_forward(monkeypatch) -> list[int]:
    """Patch capture.forward_last (what latents.collect calls) to count the prompts it runs; return the counter list."""
    counted, real = [], capture.forward_last

    def counting(m, prompts):
        counted.append(len(prompts))
        return real(m, prompts)

    monkeypatch.setattr(capture, "forward_last", counting)
    return counted


@pytest.fixture(scope="module")
def gpt2_dir(tiny_models, tmp_path_factory):
    """The tiny GPT-2 (byte-level BPE) saved with save_pretrained, so subprocesses can load it by path."""
    return save_model(tiny_models["gpt2"], tmp_path_factory.mktemp("tiny-gpt2"))


def test_collect_load_round_trip(tiny_models, tmp_path, monkeypatch):
    m = tiny_models["llama"]
    ps = prompt_set(m)
    store = latents.collect(m, ps, tmp_path / "s", shard_size=4, dtype="float32", progress=False)
    assert (len(store), store.n_layers, store.hidden_size, store.dtype) == (6, 3, 64, "float32")
    assert isinstance(store.fingerprint, Fingerprint) and store.fingerprint.same_model(m.fingerprint())
    assert store.fingerprint == m.fingerprint()
    assert store.meta["task"] == "translation" and store.meta["src"] == "fr"
    pd.testing.assert_frame_equal(store.prompts, ps.df)
    assert store.prompts["source_ids"].map(type).eq(list).all()
    everything = store.latents()
    assert everything.shape == (6, 3, 64) and everything.dtype == torch.float32
    for i, prompt in enumerate(ps.prompts):
        alone, _ = capture.forward_last(m, [prompt])
        assert torch.allclose(everything[i], alone[0], atol=1e-5)
    assert torch.equal(store.latents(1), everything[:, 1])
    assert torch.equal(store.latents(-1), everything[:, 2])
    assert torch.equal(store.latents(rows=slice(3, 5)), everything[3:5])
    row = store.dataset[5]
    assert torch.is_tensor(row["latents"]) and row["latents"].shape == (3, 64) and row["concept"] == ps.df["concept"][5]
    with pytest.raises(UsageError, match="out of range"):
        store.latents(3)
    written = {f.suffix for f in (tmp_path / "s").rglob("*") if f.is_file()}
    assert written <= {".arrow", ".json", ".lock"}, f"only Arrow and JSON are written (no pickle): {written}"
    # a finished store is returned again without a forward pass
    counted = count_forward(monkeypatch)
    again = latents.collect(m, ps, tmp_path / "s", dtype="float32", progress=False)
    assert counted == [] and torch.equal(again.latents(), everything)


def test_bfloat16_storage(tiny_models, tmp_path):
    m = tiny_models["qwen2"]
    ps = prompt_set(m, n=3)
    store = latents.collect(m, ps, tmp_path / "s", dtype=torch.bfloat16, progress=False)
    exact = latents.collect(m, ps, tmp_path / "f", dtype="float32", progress=False).latents()
    assert store.dtype == "bfloat16"
    assert torch.equal(store.latents(), exact.bfloat16().float())


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_from_cache_equals_live_sweep(tiny_models, tmp_path, family):
    m = tiny_models[family]
    ps = prompt_set(m)
    live = lens.sweep(m, ps, progress=False)
    half = latents.collect(m, ps, tmp_path / "half", shard_size=4, progress=False)
    assert half.dtype == "float16"
    assert_float16_agreement(live, lens.from_latents(half, m, progress=False), min_top_agreement=0.9)
    full = latents.collect(m, ps, tmp_path / "full", dtype="float32", progress=False)
    cached = lens.from_latents(full, m, batch_size=4, progress=False)
    assert max(differences(live, cached).values()) <= 1e-5
    assert cached["top_token"].equals(live["top_token"])


@pytest.mark.parametrize(
    "family, keys",
    [
        ("gemma3_text", {"model.norm.weight", "model.embed_tokens.weight"}),  # tied
        ("llama", {"model.norm.weight", "lm_head.weight"}),
        ("gpt2", {"transformer.ln_f.weight", "transformer.ln_f.bias", "transformer.wte.weight"}),  # LayerNorm, tied
    ],
)
def test_load_unembedding_reads_only_norm_and_head(tiny_models, bpe_tokenizer, tmp_path, monkeypatch, family, keys):
    import safetensors
    from conftest import build_tiny

    m = tiny_models["gpt2"] if family == "gpt2" else build_tiny(family, bpe_tokenizer)  # small vocabulary: fast to save
    save_model(m, tmp_path / "m", max_shard_size="100KB" if family != "gpt2" else "1GB")
    assert (tmp_path / "m" / "model.safetensors.index.json").exists() == (family != "gpt2")
    real, read = safetensors.safe_open, []

    class Spy:
        def __init__(self, *args, **kwargs):
            self.file = real(*args, **kwargs)

        def __enter__(self):
            self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def keys(self):
            return self.file.keys()

        def get_tensor(self, key):
            read.append(key)
            return self.file.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    head = model.load_unembedding(str(tmp_path / "m"))
    assert set(read) == keys
    assert isinstance(head, LoadedHead) and head.name == str(tmp_path / "m")
    assert not hasattr(head.unembedding, "name") and not hasattr(head.unembedding, "tokenizer")  # nothing patched on
    assert head.unembedding.fingerprint() == m.unembedding.fingerprint()
    assert head.unembedding.softcap == m.unembedding.softcap and head.tokenizer is not None
    ps = prompt_set(m, n=4)
    store = latents.collect(m, ps, tmp_path / "s", progress=False)
    store.check(head.fingerprint())
    pd.testing.assert_frame_equal(
        lens.from_latents(store, head, progress=False), lens.from_latents(store, m, progress=False)
    )


def test_load_unembedding_without_safetensors(tmp_path, tiny_models):
    tiny_models["llama"].hf.config.save_pretrained(tmp_path)
    with pytest.raises(model.ModelLoadError, match="has no safetensors weights"):
        model.load_unembedding(str(tmp_path))


def test_store_from_another_model_is_refused(tiny_models, tmp_path):
    llama, qwen = tiny_models["llama"], tiny_models["qwen2"]
    ps = prompt_set(llama, n=3)
    store = latents.collect(llama, ps, tmp_path / "s", progress=False)
    store.check(llama.fingerprint())
    via_lens = lens.from_latents(store, of(llama), tokenizer=llama.tokenizer, progress=False)
    pd.testing.assert_frame_equal(via_lens, lens.from_latents(store, llama, progress=False), check_exact=True)
    via_head = lens.from_latents(store, llama.unembedding, tokenizer=llama.tokenizer, progress=False)
    pd.testing.assert_frame_equal(via_head, via_lens, check_exact=True)
    with pytest.raises(UsageError, match="needs a tokenizer"):
        lens.from_latents(store, llama.unembedding, progress=False)  # a bare head carries no tokenizer
    with pytest.raises(latents.FingerprintMismatch, match=r"fingerprint mismatch: .* collected with tiny-llama"):
        store.check(qwen.fingerprint())
    for other in (qwen.unembedding, of(qwen)):  # a bare head or lens: its hash and width are compared
        with pytest.raises(latents.FingerprintMismatch, match=r"fingerprint mismatch: .* collected with tiny-llama"):
            lens.from_latents(store, other, tokenizer=qwen.tokenizer, progress=False)
    for wrong in (llama, llama.unembedding, "tiny-llama"):  # a Fingerprint only: one line, not a TypeError
        with pytest.raises(UsageError, match=r"^LatentStore.check takes a Fingerprint \(model.fingerprint"):
            store.check(wrong)
    with pytest.raises(
        UsageError, match=r"^a lens is read from a Model, a LoadedHead, an Unembedding or a Lens; got a str"
    ):
        lens.from_latents(store, "tiny-llama", progress=False)
    with pytest.raises(latents.FingerprintMismatch, match="fingerprint mismatch"):
        lens.from_latents(store, qwen, progress=False)
    with pytest.raises(latents.FingerprintMismatch, match="fingerprint mismatch"):
        latents.collect(qwen, ps, tmp_path / "s", progress=False)


def test_not_a_store_and_bad_dtype(tiny_models, tmp_path, capsys):
    for path in (tmp_path, tmp_path / "missing"):
        with pytest.raises(latents.LatentStoreError, match="is not a latent store"):
            latents.load(path)
    (tmp_path / "store.json").write_text("{not json")
    with pytest.raises(latents.LatentStoreError, match="store.json of the latent store .* is not valid JSON.*--repair"):
        latents.load(tmp_path)
    m = tiny_models["llama"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(latents.LatentStoreError, match="not empty and is not a latent store"):
        latents.collect(m, prompt_set(m, n=2), tmp_path / "other", progress=False)
    with pytest.raises(latents.LatentStoreError, match="storage dtype must be one of float16, bfloat16, float32"):
        latents.collect(m, prompt_set(m, n=2), tmp_path / "new", dtype="int8", progress=False)
    with pytest.raises(SystemExit):
        main(["cache", "--out", str(tmp_path / "x"), "--dtype-store", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_float16_overflow_is_reported(tiny_models, tmp_path, monkeypatch):
    m = tiny_models["llama"]
    real = capture.forward_last
    monkeypatch.setattr(capture, "forward_last", lambda model_, prompts: (real(model_, prompts)[0] * 1e6, None))
    with pytest.raises(latents.LatentStoreError, match="beyond float16's range.*bfloat16"):
        latents.collect(m, prompt_set(m, n=2), tmp_path / "s", progress=False)


def test_corrupt_partial_and_missing_shards(tiny_models, tmp_path, monkeypatch):
    m = tiny_models["mistral"]
    ps = prompt_set(m, n=5)
    path = tmp_path / "s"
    original = latents.collect(m, ps, path, shard_size=2, progress=False).latents()
    arrow = next((path / "shards" / "00001").glob("*.arrow"))
    blob = bytearray(arrow.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    arrow.write_bytes(bytes(blob))
    with pytest.raises(latents.LatentStoreError, match=r"corrupt shard 1 .*does not match its sha256.*rerun"):
        latents.load(path)
    arrow.write_bytes(bytes(blob[:-100]))
    with pytest.raises(latents.LatentStoreError, match=r"corrupt shard 1 .*bytes, expected"):
        latents.load(path)
    (path / "shards" / "00000" / "shard.json").unlink()
    with pytest.raises(latents.LatentStoreError, match=r"corrupt shard 0 .*shard\.json is missing"):
        latents.load(path)
    # a killed run: shard 2 missing, its half-written temporary folder left behind
    import shutil

    shutil.rmtree(path / "shards" / "00002")
    (path / "shards" / ".tmp-00002-killed").mkdir()
    (path / "shards" / ".tmp-00002-killed" / "shard.json").write_text("{}")
    with pytest.raises(latents.LatentStoreError, match=r"incomplete latent store .*: 2 of 3 shards finished; rerun"):
        latents.load(path)
    assert latents.info(path)["complete"] is False
    counted = count_forward(monkeypatch)
    repaired = latents.collect(m, ps, path, progress=False)  # recomputes shards 0, 1 (corrupt) and 2 (missing)
    assert sum(counted) == 5
    assert torch.equal(repaired.latents(), original)
    assert not list((path / "shards").glob(".tmp-*"))
    with pytest.raises(latents.LatentStoreError, match="different prompts"):
        latents.collect(m, prompt_set(m, n=4), path, progress=False)
    with pytest.raises(latents.LatentStoreError, match="different storage dtype"):
        latents.collect(m, ps, path, dtype="float32", progress=False)


def test_cli_cache_and_cache_info(gpt2_dir, tmp_path, capsys):
    out = tmp_path / "store"
    args = [
        "cache",
        "--task",
        "translation",
        "--src",
        "fr",
        "--tgt",
        "zh",
        "--n",
        "5",
        "--model",
        str(gpt2_dir),
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["n_prompts"] == 5 and printed["size_bytes"] > 5 * 3 * 64 * 2
    assert main(["cache-info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == str(gpt2_dir) and info["complete"] and info["dtype"] == "float16"
    assert (info["n_prompts"], info["n_layers"], info["hidden_size"], info["latent_bytes_per_prompt"]) == (
        5,
        3,
        64,
        3 * 64 * 2,
    )
    assert main(["cache-info", str(tmp_path)]) == 2
    assert "is not a latent store" in capsys.readouterr().err


def _cache_args(model_dir: Path, out: Path) -> list[str]:
    # --n-prompts, not --n: torchrun's own parser rejects --n as an ambiguous abbreviation of its options
    return [
        "cache",
        "--task",
        "translation",
        "--src",
        "fr",
        "--tgt",
        "zh",
        "--n-prompts",
        "12",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--shard-size",
        "2",
        "--batch-size",
        "2",
        "--out",
        str(out),
    ]


def _finished(out: Path) -> int:
    return len([p for p in (out / "shards").glob("0*") if p.is_dir()]) if (out / "shards").exists() else 0


@pytest.mark.slow
def test_killed_run_resumes_to_identical_content(gpt2_dir, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    slow_cli = (
        "import sys, time\nimport llmlatent.capture as L\nreal = L.forward_last\n"
        "def slow(*args):\n    time.sleep(0.5)\n    return real(*args)\n"
        "L.forward_last = slow\nfrom llmlatent.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", slow_cli, *_cache_args(gpt2_dir, out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while _finished(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = _finished(out)
    assert 2 <= done < 6, (
        f"expected a part-way kill, {done} of 6 shards finished ({proc.stderr.read().decode()[-500:]})"
    )
    m = model.load(str(gpt2_dir), device="cpu")
    ps = prompt_set(m, n=12)
    counted = count_forward(monkeypatch)
    resumed = latents.collect(m, ps, out, batch_size=2, progress=False)
    assert sum(counted) == 12 - 2 * done, "finished shards were recomputed"
    fresh = latents.collect(m, ps, tmp_path / "fresh", shard_size=2, batch_size=2, progress=False)
    assert torch.equal(resumed.latents(), fresh.latents())
    pd.testing.assert_frame_equal(resumed.prompts, fresh.prompts)
    for k in range(6):
        name = f"shards/{k:05d}/data-00000-of-00001.arrow"
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(gpt2_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "llmlatent",
        *_cache_args(gpt2_dir, out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["n_prompts"] == 12  # only rank 0 reports
    m = model.load(str(gpt2_dir), device="cpu")
    single = latents.collect(m, prompt_set(m, n=12), tmp_path / "one", shard_size=2, batch_size=2, progress=False)
    both = latents.load(out)
    assert both.fingerprint == single.fingerprint and both.config == single.config
    pd.testing.assert_frame_equal(both.prompts, single.prompts)
    assert torch.allclose(both.latents(), single.latents(), atol=1e-3, rtol=1e-3)


@pytest.mark.embedded
def test_embedded_lens_from_cache_without_the_model(embedded, tmp_path):
    ps = prompt_set(embedded, n=8)
    live = lens.sweep(embedded, ps, progress=False)
    store = latents.collect(embedded, ps, tmp_path / "s", progress=False)
    head = model.load_unembedding()  # None = the embedded default, read from its safetensors
    assert head.unembedding.fingerprint() == embedded.unembedding.fingerprint()
    cached = lens.from_latents(store, head, progress=False)
    diff = assert_float16_agreement(live, cached, min_top_agreement=0.95)
    print("\nembedded fr→zh, float16 store vs live sweep, max |difference|:", {c: f"{v:.1e}" for c, v in diff.items()})
    assert latents.info(tmp_path / "s")["latent_bytes_per_prompt"] == 18 * 640 * 2


def test_cache_info_verifies_like_load(tiny_models, tmp_path):
    m = tiny_models["llama"]
    path = tmp_path / "s"
    latents.collect(m, prompt_set(m, n=5), path, shard_size=2, progress=False)
    good = latents.info(path)
    assert good["complete"] is True and good["problems"] == {} and "sha256" in good["verified"]
    arrow = next((path / "shards" / "00001").glob("*.arrow"))
    blob = bytearray(arrow.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # byte flip, same size
    arrow.write_bytes(bytes(blob))
    flipped = latents.info(path)
    assert flipped["complete"] is False and "does not match its sha256" in flipped["problems"]["1"]
    unverified = latents.info(path, verify=False)  # says that it did not verify the content
    assert unverified["complete"] is True and "sha256 not checked" in unverified["verified"]
    arrow.write_bytes(bytes(blob[:-50]))  # truncated: caught even without hashes
    assert "bytes, expected" in latents.info(path, verify=False)["problems"]["1"]
    (path / "shards" / "00002" / "shard.json").unlink()
    info = latents.info(path)
    assert info["complete"] is False and "shard.json is missing" in info["problems"]["2"]


def test_second_process_skips_claimed_shards_then_waits(tiny_models, tmp_path):
    """A claimed shard (another process's lock) is left alone until released; the result equals a fresh store."""
    import threading

    from filelock import FileLock

    m = tiny_models["llama"]
    ps = prompt_set(m, n=6)
    fresh = latents.collect(m, ps, tmp_path / "fresh", shard_size=2, progress=False).latents()
    path = tmp_path / "s"
    latents.collect(m, ps, path, shard_size=2, progress=False)
    import shutil

    shutil.rmtree(path / "shards" / "00000")
    shutil.rmtree(path / "shards" / "00002")
    (path / "shards" / ".tmp-00000-other").mkdir()  # the other process's half-written shard: must not be removed
    other = FileLock(str(path / "shards" / ".claim-00000.lock"))
    other.acquire()
    result = {}
    worker = threading.Thread(target=lambda: result.update(store=latents.collect(m, ps, path, progress=False)))
    worker.start()
    for _ in range(600):  # the worker does shard 2, then waits for shard 0
        if (path / "shards" / "00002").exists() or not worker.is_alive():
            break
        time.sleep(0.1)
    assert (path / "shards" / "00002").exists() and not (path / "shards" / "00000").exists()
    assert (path / "shards" / ".tmp-00000-other").exists()
    assert worker.is_alive()  # waiting for the claimed shard
    other.release()  # the other process died without writing shard 0: the waiting one computes it
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert torch.equal(result["store"].latents(), fresh)


# A `cache` run whose forward pass first waits (holding its first shard's claim) until the other run also holds
# one, so that the two really run at once and each meets the other's claim; then a little slower per batch.
RACING_CLI = r"""
import os, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import llmlatent.capture as capture
barrier, real = Path(os.environ["BARRIER"]), capture.forward_last
def gated(*args):
    me = barrier / str(os.getpid())
    if not me.exists():
        me.touch()
        deadline = time.monotonic() + 30
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    time.sleep(0.05)
    return real(*args)
capture.forward_last = gated
from llmlatent.cli import main
raise SystemExit(main(sys.argv[1:]))
"""
COMPUTED = re.compile(r"computed shard (\d+) of .* in process (\d+)")


def _store_leftovers(path: Path) -> list[str]:
    """Return the store's entries other than its results and its (free) lock files; assert every lock is free."""
    from filelock import FileLock

    extra = []
    for entry in sorted(path.rglob("*")):
        rel = entry.relative_to(path).as_posix()
        if rel.endswith(".lock"):
            lock = FileLock(str(entry))
            lock.acquire(timeout=0)  # raises Timeout while a process still holds it
            lock.release()
        if not re.fullmatch(
            r"store\.json|store\.lock|shards|shards/\.claim-\d{5}\.lock|shards/\d{5}(/[^./][^/]*)?", rel
        ):
            extra.append(rel)
    return extra


@pytest.mark.slow
def test_two_cache_processes_compute_each_shard_once(gpt2_dir, tmp_path):
    """Two real `cache` processes on one store: each shard computed once in total, the store equals one process's."""
    out, barrier = tmp_path / "store", tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", BARRIER=str(barrier))
    cmd = [sys.executable, "-c", RACING_CLI, "-v", *_cache_args(gpt2_dir, out)]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-2000:]
        assert json.loads(stdout.strip().splitlines()[-1])["n_prompts"] == 12
    computed = {
        p.pid: [int(k) for k, pid in COMPUTED.findall(err) if int(pid) == p.pid] for p, (_, err) in zip(procs, outputs)
    }
    assert all(computed.values()), f"both processes must have computed shards: {computed}"
    assert sorted(k for ks in computed.values() for k in ks) == list(range(6)), (
        f"a shard computed twice or never: {computed}"
    )
    assert any("being computed by another process" in err for _, err in outputs)  # the claims were really contended
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = model.load(str(gpt2_dir), device="cpu")
        alone = latents.collect(m, prompt_set(m, n=12), tmp_path / "alone", shard_size=2, batch_size=2, progress=False)
    finally:
        torch.set_num_threads(threads)
    both = latents.load(out)
    assert both.config == alone.config and torch.equal(both.latents(), alone.latents())
    pd.testing.assert_frame_equal(both.prompts, alone.prompts)
    assert _store_leftovers(out) == []


# A `cache` run that blocks (and is then SIGKILLed) while shard 1 is half-written: its Arrow file is in the
# temporary folder, its shard.json not yet.
BLOCKED_WRITER_CLI = r"""
import sys, time
import torch
torch.set_num_threads(1)
from llmlatent.latents import shards as latent_shards
real = latent_shards.write_json
def write_json(path, content):
    if path.name == "shard.json" and content.get("shard") == 1:
        print("WRITING", path.parent.name, flush=True)
        time.sleep(600)
    return real(path, content)
latent_shards.write_json = write_json
from llmlatent.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_store_writer_killed_mid_shard(gpt2_dir, tmp_path, monkeypatch):
    """SIGKILL inside write_shard: the OS frees the claim, the next run removes the half-written shard and resumes."""
    from filelock import FileLock

    out = tmp_path / "store"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_WRITER_CLI, *_cache_args(gpt2_dir, out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # "" if the child died first
    proc.kill()
    _, stderr = proc.communicate()
    assert line.startswith("WRITING .tmp-00001-"), stderr[-2000:]
    half = out / "shards" / line.split()[1]
    assert half.is_dir() and list(half.glob("*.arrow")) and not (half / "shard.json").exists()
    assert (out / "shards" / "00000").is_dir() and not (out / "shards" / "00001").exists()
    claim = FileLock(str(out / "shards" / ".claim-00001.lock"))
    claim.acquire(timeout=0)  # the killed holder's claim was released by the operating system
    claim.release()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = model.load(str(gpt2_dir), device="cpu")
        ps = prompt_set(m, n=12)
        counted = count_forward(monkeypatch)
        resumed = latents.collect(m, ps, out, batch_size=2, progress=False)
        assert sum(counted) == 10  # shard 0 kept, shards 1-5 computed
        monkeypatch.undo()
        fresh = latents.collect(m, ps, tmp_path / "fresh", shard_size=2, batch_size=2, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert not half.exists() and torch.equal(resumed.latents(), fresh.latents())
    assert _store_leftovers(out) == []


def test_corrupt_store_json_is_repaired_keeping_good_shards(tiny_models, tmp_path, monkeypatch, capsys):
    m = tiny_models["llama"]
    ps = prompt_set(m, n=5)
    path = tmp_path / "s"
    original = latents.collect(m, ps, path, shard_size=2, progress=False).latents()
    (path / "store.json").write_text('{"format": "llmlatent-lat')
    with pytest.raises(latents.LatentStoreError, match="not valid JSON.*--repair.*finished shard"):
        latents.load(path)
    with pytest.raises(latents.LatentStoreError, match="--repair"):
        latents.collect(m, ps, path, progress=False)
    counted = count_forward(monkeypatch)
    repaired = latents.collect(m, ps, path, repair=True, progress=False)  # shard size read from shard 0
    assert sum(counted) == 0 and torch.equal(repaired.latents(), original)
    assert (path / "store.json.corrupt-0").exists()
    (path / "store.json").unlink()
    with pytest.raises(latents.LatentStoreError, match="has shards but no store.json.*--repair"):
        latents.check_store_dir(path)
    fresh = tmp_path / "crashed"
    (fresh / "shards").mkdir(parents=True)  # killed between creating shards/ and writing store.json
    latents.check_store_dir(fresh)
    assert len(latents.collect(m, ps, fresh, progress=False)) == 5
    counted.clear()
    repaired = latents.collect(m, ps, path, repair=True, progress=False)
    assert sum(counted) == 0 and torch.equal(repaired.latents(), original)


def test_shard_size_zero_is_an_error(tiny_models, tmp_path):
    m = tiny_models["llama"]
    with pytest.raises(UsageError, match=r"shard_size \(--shard-size\) must be at least 1, got 0"):
        latents.collect(m, prompt_set(m, n=2), tmp_path / "s", shard_size=0, progress=False)
    assert not (tmp_path / "s").exists()


def test_cache_force_recollects_a_store_and_never_removes_another_folder(tiny_models, tmp_path, monkeypatch, capsys):
    from llmlatent import cli

    monkeypatch.setattr(cli, "load_model", lambda args: tiny_models["llama"])
    out = tmp_path / "store"
    argv = ["cache", "--task", "translation", "--src", "fr", "--tgt", "zh", "--n-prompts", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    stamp = (out / "store.json").stat().st_mtime_ns
    assert cli.main(argv) == 0 and (out / "store.json").stat().st_mtime_ns == stamp  # resumed: nothing to do
    assert cli.main([*argv, "--force"]) == 0 and (out / "store.json").stat().st_mtime_ns != stamp  # collected anew
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    argv[-1] = str(mine)
    assert cli.main([*argv, "--force"]) == 2 and (mine / "thesis.tex").read_text() == "precious"
    assert "is not a latent store" in capsys.readouterr().err
    disguised = tmp_path / "disguised"  # a store.json and a shards/ folder of a user's own files
    (disguised / "shards").mkdir(parents=True)
    (disguised / "shards" / "data.txt").write_text("mine")
    (disguised / "store.json").write_text("{}")
    argv[-1] = str(disguised)
    assert cli.main([*argv, "--force"]) == 2 and (disguised / "shards" / "data.txt").read_text() == "mine"
    assert "holds files a latent store does not write" in capsys.readouterr().err


def test_resuming_a_store_in_another_dtype_says_so(tiny_models, tmp_path):
    """A store resumed by the same model in another dtype names both dtypes and the offline fix."""
    import copy

    m = tiny_models["llama"]
    prompts = tasks.build("translation", "fr", "zh", m.tokenizer, n=2)
    store = latents.collect(m, prompts, tmp_path / "s", progress=False)
    assert store.config["model_dtype"] == "torch.float32"
    in_bf16 = copy.deepcopy(m)
    in_bf16.hf.to(torch.bfloat16)
    with pytest.raises(latents.FingerprintMismatch) as info:
        latents.collect(in_bf16, prompts, tmp_path / "s", progress=False)
    message = str(info.value)
    assert "run in torch.float32, but the model now runs in torch.bfloat16" in message, message
    assert "--dtype float32 to resume" in message
