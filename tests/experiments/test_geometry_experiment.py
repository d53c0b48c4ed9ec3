"""The geometry experiment end to end on a tiny Llama store (real Llama-2 tokenizer, untied head), and bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from llmlatent import geometry, latents, model, tasks
from llmlatent.cli import main
from llmlatent.errors import UsageError
from llmlatent.experiments.geometry import GeometrySettings, compute

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(llama2_folder, tmp_path_factory):
    m = model.load(llama2_folder, dtype="float32")
    prompts = tasks.build("translation", "fr", "zh", m.tokenizer, n=12, seed=0)
    path = tmp_path_factory.mktemp("geo") / "store"
    return latents.collect(m, prompts, path, dtype="float32", progress=False), m


def test_geometry_end_to_end_from_the_command_line(store, llama2_folder, tmp_path):
    st, m = store
    out = tmp_path / "out"
    args = ("geometry", "--from-latents", st.path, "--model", llama2_folder, "--n-paths", "5", "--n-tokens", "300")
    assert main([*map(str, args), "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    names = {"mds.csv", "paths.csv", "ranks.csv", "norms.csv", "ranks_summary.tsv", "mds.png", "norms.pdf"}
    assert names <= set(record["files"])
    points = pd.read_csv(out / "mds.csv")
    assert (points["kind"] == "token").sum() == 300 and (points["kind"] == "latent").sum() == 5 * st.n_layers
    assert len(pd.read_csv(out / "paths.csv")) == 5 and 0 <= record["paths_english_before_target"] <= 1
    # the ranks: the untied input embedding read alone from the safetensors, against a plain computation
    ranks = pd.read_csv(out / "ranks.csv")
    u = geometry.scaled_unembedding(m.unembedding).double()
    e = m.hf.get_input_embeddings().weight.detach().double()
    a, _, b = torch.linalg.svd(u.T @ e)
    row = ranks.iloc[0]
    logits = (u @ (a @ b) @ e[int(row["target_token_id"])]).numpy()
    assert row["rank_zh"] == 1 + (logits > logits[int(row["target_token_id"])]).sum()
    assert row["rank_en"] == 1 + (logits > logits[int(row["english_token_id"])]).sum()
    assert (ranks["rank_en_other_concept"] >= 1).all()  # the control: another concept's English token
    summary = pd.read_csv(out / "ranks_summary.tsv", sep="\t").set_index("statistic")
    assert summary.loc["Median", "rank_zh"] == ranks["rank_zh"].median()
    norms = pd.read_csv(out / "norms.csv")
    assert np.allclose(norms["norm_mean"], st.latents().norm(dim=-1).mean(0).numpy(), rtol=1e-5)
    before = (out / "mds.csv").read_bytes()
    assert main([*map(str, args), "--out", str(out), "--force"]) == 0
    assert (out / "mds.csv").read_bytes() == before  # seeded: byte-identical


def test_the_loaded_model_and_the_head_alone_give_the_same_result(store, llama2_folder):
    st, m = store
    s = GeometrySettings(from_latents=str(st.path), n_paths=4, n_tokens=200, progress=False)
    live, head = compute(m, s), compute(model.load_unembedding(llama2_folder), s)
    pd.testing.assert_frame_equal(live.ranks, head.ranks)
    pd.testing.assert_frame_equal(live.mds, head.mds, atol=1e-9)


def test_bad_input_gets_one_line(store, tiny_models, tmp_path, capsys):
    st, _ = store
    cases = [
        (["geometry", "--out", str(tmp_path / "a")], "--from-latents STORE"),
        (["geometry", "--from-latents", str(tmp_path), "--out", str(tmp_path / "b")], "latent store"),
        (["geometry", "--from-latents", str(st.path), "--n-paths", "0", "--out", str(tmp_path / "c")], "n-paths"),
    ]
    for args, expected in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / args[-1]).exists()
    with pytest.raises(UsageError, match="--from-latents"):
        GeometrySettings()
    with pytest.raises(latents.FingerprintMismatch):  # another model's head is refused
        compute(tiny_models["llama"], GeometrySettings(from_latents=str(st.path)))


def test_reproduce_draws_the_geometry_of_its_latent_store(tiny_models, tmp_path):
    from llmlatent.experiments import reproduce

    m = tiny_models["gemma3_text"]  # tied embeddings, Gemma's (1 + w) norm, a live model
    out = tmp_path / "results"
    reproduce.latent_step(m, out / reproduce.LATENTS, n=4, seed=0, batch_size=4, force=False)
    first = reproduce.geometry_step(m, out, seed=0, force=False)
    assert first["n_paths"] == 4 and first["model"]["model"] == m.name
    (tmp_path / "figures").mkdir()
    reproduce.copy_figures(out, tmp_path / "figures")
    assert (tmp_path / "figures" / "geometry_fr_zh_mds.png").exists()
    assert (tmp_path / "figures" / "geometry_fr_zh_norms.pdf").exists()
    assert reproduce.geometry_step(m, out, seed=0, force=False) == first  # reused by key
