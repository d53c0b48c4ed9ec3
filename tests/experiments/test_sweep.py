"""The tidy sweep, summaries with confidence intervals, token energy, figures and the sweep CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from llmlatent import cli, metrics, tasks
from llmlatent.experiments import runs
from llmlatent.experiments import sweep as experiment
from llmlatent.lens import last_token as lens


@pytest.fixture(scope="module")
def prompts(spm_tokenizer):
    return tasks.build("translation", "fr", "zh", spm_tokenizer, n=12, seed=1)


def test_sweep_frame_and_batch_invariance(tiny_models, prompts):
    model = tiny_models["gemma3_text"]
    rows = lens.sweep(model, prompts, batch_size=5, progress=False)
    assert len(rows) == len(prompts) * model.n_layers
    for col in ("prompt_id", "layer", "p_target", "p_english", "p_source", "entropy", "energy", "top_token"):
        assert col in rows
    assert rows["p_source"].notna().all()  # fr is neither en nor the target
    one = lens.sweep(model, prompts, batch_size=1, progress=False)
    numeric = ["p_target", "p_english", "p_source", "entropy", "energy"]
    assert np.abs(rows[numeric].to_numpy() - one[numeric].to_numpy()).max() <= 1e-5
    # p_target equals the full distribution's mass on the set
    lp = lens.layer_logprobs(model, prompts.prompts[:1])[0]
    ids = prompts.df.iloc[0]["target_ids"]
    assert math.isclose(rows.iloc[2]["p_target"], lp[2, ids].exp().sum().item(), abs_tol=1e-6)


def test_repetition_has_no_source(tiny_models, spm_tokenizer):
    ps = tasks.build("repetition", "ru", "ru", spm_tokenizer, n=4)
    rows = lens.sweep(tiny_models["llama"], ps, progress=False)
    assert rows["p_source"].isna().all()
    assert metrics.summarize(rows)["p_source_mean"].isna().all()


def test_token_energy_matches_explicit_formula():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from llmlatent.adapter import Unembedding

    torch.manual_seed(0)
    norm, head = LlamaRMSNorm(16), torch.nn.Linear(16, 300, bias=False)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    unembedding = Unembedding(norm, head)
    h = torch.randn(5, 16)
    u = head.weight.float() * norm.weight.float()
    u = u / u.norm(dim=-1, keepdim=True)
    hn = h / h.norm(dim=-1, keepdim=True)
    expected = ((hn @ u.T) ** 2).mean(-1).sqrt() / ((u @ u.T) ** 2).mean().sqrt()
    assert torch.allclose(metrics.token_energy(unembedding, h), expected, rtol=1e-4)


def test_summarize_normal_and_bootstrap():
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {
            "prompt_id": np.repeat(np.arange(50), 2),
            "layer": np.tile([0, 1], 50),
            "p_target": rng.uniform(size=100),
            "p_english": rng.uniform(size=100),
            "p_source": np.nan,
            "entropy": rng.uniform(size=100),
            "energy": rng.uniform(size=100),
        }
    )
    s = metrics.summarize(rows)
    layer0 = rows[rows.layer == 0]["p_target"]
    half = 1.96 * layer0.std(ddof=1) / math.sqrt(50)
    assert math.isclose(s.loc[0, "p_target_lo"], layer0.mean() - half)
    assert list(s.columns[:5]) == ["layer", "n", "p_target_mean", "p_target_lo", "p_target_hi"]
    b1 = metrics.summarize(rows, ci="bootstrap", seed=3)
    b2 = metrics.summarize(rows, ci="bootstrap", seed=3)
    pd.testing.assert_frame_equal(b1, b2)
    assert (b1["p_target_lo"] < b1["p_target_mean"]).all() and (b1["p_target_mean"] < b1["p_target_hi"]).all()
    with pytest.raises(ValueError, match="ci must be"):
        metrics.summarize(rows, ci="magic")


def test_a_swept_prompt_set_is_deterministic(tiny_models, prompts, tmp_path):
    model = tiny_models["mistral"]
    settings = experiment.SweepSettings(prompt_set=prompts, seed=0, progress=False)
    run = runs.run(settings, model, tmp_path / "a")
    runs.run(settings, model, tmp_path / "b")
    for name in ("rows.csv", "summary.csv", "prompts.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for name in ("probabilities.png", "probabilities.pdf", "energy.png", "energy.pdf", "run.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "a" / "run.json").read_text())
    assert saved["n_prompts"] == 12 and saved["peak_english"] == run["peak_english"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_failed_run_leaves_nothing(tiny_models, prompts, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(metrics, "summarize", boom)
    with pytest.raises(RuntimeError):
        runs.run(experiment.SweepSettings(prompt_set=prompts, progress=False), tiny_models["llama"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_language_is_one_line(capsys):
    assert cli.main(["sweep", "--task", "translation", "--src", "fr", "--tgt", "xx", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown language 'xx'" in err
