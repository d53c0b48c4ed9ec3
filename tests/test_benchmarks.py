"""Smoke test of benchmarks/bench_lens.py's core on a tiny model: parity of sweep and seed-style (no timing asserts)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llmlatent import tasks

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_lens.py"


pytestmark = pytest.mark.usefixtures("one_thread")


def _load(path):
    """Return the benchmark script at ``path`` imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_lens():
    return _load(BENCH)


def test_bench_lens_core_parity(tiny_models, spm_tokenizer, bench_lens):
    model = tiny_models["gemma3_text"]  # hidden_states[-1] is normalised: the baseline must use the raw block output
    frame = tasks.build("translation", "fr", "zh", spm_tokenizer, n=4, seed=2).df
    result = bench_lens.benchmark(model, frame, batch_size=4, repeats=1, seed_n=2, warmup=False, log=lambda _msg: None)
    assert result["parity_ok"], result["parity_by_metric"]
    assert result["parity_max_abs_diff"] <= 1e-4
    # the report's timing fields exist (their values are timings: never asserted on)
    assert {"bare_seconds", "sweep_seconds", "seed_seconds", "sweep_over_bare", "seed_over_sweep"} <= set(result)


def test_synthetic_tiny_mode_parity(bench_lens):
    model = bench_lens.synthetic_model("tiny", "cpu", torch.float32)
    frame = bench_lens.synthetic_prompts(model.unembedding.vocab_size, 5, seed=1)
    assert frame["prompt"].map(lambda p: 50 <= len(p.split()) <= 70).all()
    result = bench_lens.benchmark(model, frame, batch_size=4, repeats=1, seed_n=2, warmup=False, log=lambda _msg: None)
    assert result["parity_ok"], result["parity_by_metric"]


BENCH_PATCH = BENCH.parent / "bench_patch.py"


@pytest.fixture(scope="module")
def bench_patch():
    return _load(BENCH_PATCH)


def test_bench_patch_tiny_mode_parity(bench_patch, tmp_path):
    args = bench_patch.argparse.Namespace(tiny=True, n=6, seed=1)
    model, receivers, donors, sets = bench_patch.setup(args)
    assert len(receivers) == len(donors) == 6 and set(sets) == {"cd_lr", "cd_ld", "cr_lr", "cr_ld"}
    result = bench_patch.benchmark(
        model, receivers, donors, sets, batch_size=4, repeats=1, naive_n=3, log=lambda _msg: None
    )
    assert result["parity_ok"], (result["parity_max_rel_diff"], result["parity_max_p_diff"])
    for key in ("bare_seconds", "patch_seconds", "naive_seconds_extrapolated", "patch_over_bare", "naive_over_patch"):
        assert result[key] > 0
    assert (
        bench_patch.main(["--tiny", "--n", "4", "--repeats", "1", "--naive-n", "2", "--json", str(tmp_path / "b.json")])
        == 0
    )
    assert (tmp_path / "b.json").exists()


def test_bench_latent_runs_both_sweeps(tiny_models):
    bench = _load(BENCH.parent / "bench_latent.py")
    result = bench.benchmark(tiny_models["gemma3_text"], n=3, repeats=1, batch_size=2)
    assert result["n_prompts"] == 3 and result["latent"] == ["en", "fr", "de", "ru", "zh"]
    assert {"sweep_five_over_one", "decode_five_over_one"} <= set(result)  # timings: never asserted on


BENCH_PAPER = BENCH.parent / "bench_paper.py"


def test_bench_paper_at_a_tiny_shape_imports_exactly_and_sweeps(real_tokenizer, tmp_path, monkeypatch):
    real_tokenizer("llama2")  # skips when the fixture tokenizer cannot be fetched
    bench_paper = _load(BENCH_PAPER)
    monkeypatch.setitem(bench_paper.SHAPE, "n_layers", 2)
    monkeypatch.setitem(bench_paper.SHAPE, "hidden", 64)
    head_dir = bench_paper.fake_llama2_head(tmp_path / "head")
    result = bench_paper.bench_import(tmp_path, head_dir, size_gb=12 * 2 * 64 * 4 / 1e9)  # 12 prompts
    assert result["n_prompts"] == 12 and result["bytes"] > 12 * 2 * 64 * 4
    from llmlatent import latents

    stored = latents.load(tmp_path / "import-store").latents()
    assert torch.equal(stored, torch.load(tmp_path / "import" / "7b_fr_zh_latents.pt", weights_only=True))
    sweep = bench_paper.bench_sweep(tmp_path, head_dir, n=6)
    assert sweep["n_prompts"] == 6 and sweep["n_layers"] == 2
