"""Activation patching on tiny random models: identities, fast path = naive path, padding, hooks, windows."""

from __future__ import annotations

import json

import pytest
import torch

from llmlatent import capture, patching, tasks
from llmlatent.errors import UsageError
from llmlatent.lens import decode

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("llama", "gemma3_text", "gemma2", "gpt2")  # rotary + sliding window + soft-capping + learned positions
TEXTS = [
    "Paris",
    'Français: "fleur" - 中文: "花"\nFrançais: "nuage" - 中文: "',
    "A cloud, a mountain, a bag",
    "Книга лежит на столе. 书在桌子上。 A cloud, a mountain, a bag, a river, water, bread.",
]


def prompts(model):
    """Return receiver and donor prompts of clearly different lengths (padding matters; longer than gemma's window
    8)."""
    if model.name.endswith("gpt2"):
        return TEXTS, TEXTS[::-1]
    frame = tasks.build("translation", "fr", "zh", model.tokenizer, n=4, seed=3).df
    return TEXTS, frame["prompt"].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_self_patch_changes_nothing(tiny_models, family):
    model = tiny_models[family]
    receivers, _ = prompts(model)
    own = patching.donor_latents(model, receivers)
    result = patching.sweep_many(model, receivers, {"self": own}, window=2)
    for k in range(model.n_layers):
        assert torch.allclose(result.patched["self"][:, k], own[:, -1], atol=1e-5)
    assert torch.allclose(result.unpatched, own[:, -1], atol=1e-5)
    assert torch.allclose(patching.patch(model, receivers, own, 1), own, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("window", [1, 2])
def test_fast_path_equals_naive_path(tiny_models, family, window):
    model = tiny_models[family]
    receivers, donors = prompts(model)
    donor = patching.donor_latents(model, donors)
    fast = patching.sweep(model, receivers, donor, window=window, batch_size=3)
    naive = patching.sweep_naive(model, receivers, donor, window=window, batch_size=4)
    assert fast.shape == (len(receivers), model.n_layers, model.hidden_size)
    assert (fast - naive).abs().max() <= 1e-5
    own = patching.donor_latents(model, receivers)
    assert (fast[:, 0] - own[:, -1]).abs().max() > 1e-3, "patching must change something (the test could not fail)"


@pytest.mark.parametrize("family", FAMILIES)
def test_last_block_gives_the_donor_distribution(tiny_models, family):
    model = tiny_models[family]
    receivers, donors = prompts(model)
    donor = patching.donor_latents(model, donors)
    final = patching.sweep(model, receivers, donor, layers=[model.n_layers - 1])[:, 0]
    logp = torch.log_softmax(model.unembedding(final).float(), -1)
    want = torch.log_softmax(
        capture.forward_last(model, donors)[1], -1
    )  # the donor prompts' own next-token distribution
    assert (logp.exp() - want.exp()).abs().max() <= 1e-5
    stats = decode.decode(model.unembedding, final, k=1, energy=False)
    assert stats["top_ids"][:, 0].tolist() == want.argmax(-1).tolist()


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_batch_size_and_padding_independence(tiny_models, family):
    model = tiny_models[family]
    receivers, donors = prompts(model)
    donor = patching.donor_latents(model, donors)
    together = patching.sweep(model, receivers, donor, batch_size=4)
    for i, text in enumerate(receivers):  # alone: no padding at all
        alone = patching.sweep(model, [text], donor[i : i + 1], batch_size=1)
        assert (alone[0] - together[i]).abs().max() <= 1e-5
    assert (patching.sweep(model, receivers, donor, batch_size=1) - together).abs().max() <= 1e-5


def test_window_semantics(tiny_models):
    model = tiny_models["llama"]  # 3 blocks
    receivers, donors = prompts(model)
    donor = patching.donor_latents(model, donors)
    assert list(patching.patched_blocks(0, 2, 3)) == [0, 1]
    assert list(patching.patched_blocks(2, 5, 3)) == [2]  # clipped at the last block
    out = patching.patch(model, receivers, donor, 0, window=2)
    assert torch.allclose(out[:, :2], donor[:, :2], atol=1e-6)  # after blocks 0 and 1: the donor's own
    assert (out[:, 2] - donor[:, 2]).abs().max() > 1e-3  # block 2 runs on the receiver's context
    one = patching.patch(model, receivers, donor, 0, window=1)
    assert (one[:, 1] - donor[:, 1]).abs().max() > 1e-3
    # the trap: a window through the last block makes every layer give the donor's own final state
    trap = patching.sweep(model, receivers, donor, window=model.n_layers)
    assert torch.allclose(trap, donor[:, -1:].expand_as(trap), atol=1e-5)


def test_hooks_removed_after_exception(tiny_models):
    model = tiny_models["gemma3_text"]
    receivers, donors = prompts(model)
    donor = patching.donor_latents(model, donors)
    blocks = model.adapter.blocks
    before = [len(b._forward_hooks) for b in blocks]
    with pytest.raises(RuntimeError, match="boom"):
        with patching.overwrite_last(model, {0: donor[:, 0], 2: donor[:, 2]}):
            assert [len(b._forward_hooks) for b in blocks] != before
            raise RuntimeError("boom")
    assert [len(b._forward_hooks) for b in blocks] == before

    def fail(*_args):
        raise RuntimeError("boom in forward")

    handle = blocks[1].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom in forward"):
            patching.sweep(model, receivers, donor)
        with pytest.raises(RuntimeError, match="boom in forward"):
            patching.patch(model, receivers, donor, 0)
    finally:
        handle.remove()
    assert [len(b._forward_hooks) for b in blocks] == before


def test_bad_input(tiny_models):
    model = tiny_models["llama"]
    receivers, _ = prompts(model)
    good = torch.zeros(len(receivers), model.n_layers, model.hidden_size)
    with pytest.raises(UsageError, match="out of range"):
        patching.patch(model, receivers, good, model.n_layers)
    with pytest.raises(UsageError, match="window"):
        patching.patch(model, receivers, good, 0, window=0)
    with pytest.raises(UsageError, match="donor_latents must be"):
        patching.patch(model, receivers, good[:2], 0)
    with pytest.raises(UsageError, match="one shape"):
        patching.mean_latents([good, good[:1]])
    assert torch.equal(patching.mean_latents([good, good + 2]), good + 1)


def test_from_store(tiny_models, tmp_path):
    from llmlatent import latents

    model = tiny_models["llama"]
    ps = tasks.build("translation", "fr", "zh", model.tokenizer, n=4, seed=1)
    store = latents.collect(model, ps, tmp_path / "store", dtype="float32", progress=False)
    concepts = ps.df["concept"].tolist()[::-1]
    got = patching.from_store(store, concepts, model)
    live = patching.donor_latents(model, ps.df.set_index("concept").loc[concepts, "prompt"].tolist())
    assert (got - live).abs().max() <= 1e-5
    with pytest.raises(UsageError, match="no prompt"):
        patching.from_store(store, ["no-such-concept"])


def run_patching(model, out, *, force=False, **settings):
    """Return run.json's content after ``runs.run`` of ``PatchSettings(**settings)``."""
    from llmlatent.experiments import runs
    from llmlatent.experiments.patching import PatchSettings

    return runs.run(PatchSettings(**settings), model, out, force=force)


def test_experiment_folder_is_complete_seeded_and_cached(tiny_models, tmp_path):

    model = tiny_models["gemma3_text"]
    kwargs = dict(
        donor=("de", "fr"),
        receiver=("ru", "zh"),
        mean_over=("de", "en", "zh"),
        n_pairs=3,
        seed=4,
        layers=[0, 2],
        batch_size=2,
    )
    run = run_patching(model, tmp_path / "a", **kwargs)
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert {
        "rows.csv",
        "summary.csv",
        "run.json",
        "language_concept.png",
        "language_concept.pdf",
        "mean_over_languages.png",
        "mean_over_languages.pdf",
    } <= names
    assert run["mean_over"] == ["de", "en"] and run["n_pairs"] == 3  # zh, the receiver's language, is skipped
    stored = json.loads((tmp_path / "a" / "run.json").read_text())
    assert stored["model"] == model.fingerprint().to_dict()  # the fingerprint as a dict, never its repr
    import pandas as pd

    rows = pd.read_csv(tmp_path / "a" / "rows.csv")
    assert (rows["donor_concept"] != rows["receiver_concept"]).all()
    assert rows.groupby("condition").size().to_dict() == {"unpatched": 3, "donor": 6, "single": 6, "mean": 6}
    for column in ("p_cd_lr", "p_cd_ld", "p_cr_lr", "p_cr_ld"):
        assert rows[column].between(0, 1).all()
    run_patching(model, tmp_path / "b", **kwargs)
    for name in ("rows.csv", "summary.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    (tmp_path / "b" / "rows.csv").write_text("stale")  # a cached folder is reused only with force=False
    run_patching(model, tmp_path / "b", force=False, **kwargs)
    assert (tmp_path / "b" / "rows.csv").read_text() == "stale"


def test_experiment_bad_settings_fail_before_any_work(tmp_path, monkeypatch):
    from llmlatent import cli
    from llmlatent.experiments import patching as pe

    def no_model(_args):
        raise AssertionError("bad settings must be rejected before the model is loaded")

    monkeypatch.setattr(cli, "load_model", no_model)

    with pytest.raises(pe.UsageError, match="SRC:TGT"):
        pe.parse_spec("de-fr")
    with pytest.raises(pe.UsageError, match="different languages"):
        pe.check_settings(("de", "zh"), ("ru", "zh"), None, None)
    with pytest.raises(pe.UsageError, match="two input languages"):
        pe.check_settings(("de", "fr"), ("ru", "zh"), ["zh", "en"], None)
    (tmp_path / "x.txt").write_text("unrelated")
    for argv in (
        ["--donor", "de:de"],
        ["--mean-over", "en"],
        ["--n", "1"],
        ["--window", "0"],
        ["--out", str(tmp_path)],
    ):
        argv = ["patch", *argv] + ([] if "--out" in argv else ["--out", str(tmp_path / "new")])
        assert cli.main(argv) == 2
    assert not (tmp_path / "new").exists()


def test_reproduce_step_writes_figures_and_reuses_its_run(tiny_models, tmp_path):
    from llmlatent.experiments import reproduce, runs

    model = tiny_models["llama"]
    results, figures = tmp_path / "results", tmp_path / "figures"
    figures.mkdir()
    (step,) = [
        s
        for s in reproduce.plan(reproduce.ReproduceSettings(results=str(results), n_pairs=2))
        if s.folder == reproduce.PATCHING
    ]
    first = runs.run(step.settings, model, results / step.folder)
    reproduce.copy_figures(results, figures)
    assert first["n_pairs"] == 2 and first["mean_over"] == ["de", "fr", "ru", "en"]
    assert {p.name for p in figures.iterdir()} == {
        f"patching_{name}.{ext}" for name in ("language_concept", "mean_over_languages") for ext in ("png", "pdf")
    }
    out = results / step.folder
    stamp = (out / "run.json").stat().st_mtime_ns
    assert runs.run(step.settings, model, out)["seconds"] == first["seconds"]
    assert (out / "run.json").stat().st_mtime_ns == stamp


def test_window_through_the_last_block_reports_no_moves_at(tiny_models, tmp_path, caplog):
    """A window that overwrites every block through the last one gives flat curves: no 'moves at' layer, a warning."""
    from llmlatent.experiments import patching as pe

    model = tiny_models["gemma3_text"]
    kwargs = dict(mean_over=(), n_pairs=500, seed=4, layers=[0, 1], batch_size=2)
    with caplog.at_level("WARNING"):
        run = run_patching(model, tmp_path / "w", window=model.n_layers, **kwargs)
    assert run["window_reaches_last_block"] is True
    assert run["language_moves_at"] is None and run["concept_moves_at"] is None
    assert "overwrites every block through the last one" in caplog.text
    assert "donor/receiver pairs pass the filters (500 asked for)" in caplog.text  # --n beyond the pairs: said
    normal = run_patching(model, tmp_path / "n", window=1, **{**kwargs, "n_pairs": 3})
    assert normal["window_reaches_last_block"] is False
    import pandas as pd

    pairs = pd.read_csv(tmp_path / "n" / "pairs.csv")  # which donor was patched into which receiver, with prompts
    assert len(pairs) == normal["n_pairs"] == 3 and (pairs["donor_concept"] != pairs["receiver_concept"]).all()
    rows = pd.read_csv(tmp_path / "n" / "rows.csv")
    assert set(zip(rows["donor_concept"], rows["receiver_concept"])) == set(
        zip(pairs["donor_concept"], pairs["receiver_concept"])
    )
    assert pairs["receiver_prompt"].str.endswith('中文: "').all()
    with pytest.raises(UsageError, match="lists a language twice"):
        pe.PatchSettings(mean_over=("de", "de", "fr"))
