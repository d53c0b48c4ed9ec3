"""The package functions behind the notebooks' cells: compare_variants, pivot_examples, notebook.setup/load."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from conftest import save_model

from llmlatent import lens, metrics, notebook, tasks
from llmlatent.experiments import sweep as experiment

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compare_variants_equals_separate_sweeps(tiny_models, spm_tokenizer):
    model = tiny_models["llama"]
    table, curves = experiment.compare_variants(
        model,
        "translation",
        "fr",
        "zh",
        n=3,
        seed=2,
        batch_size=2,
        variants={"default": {}, "strict": {"strict": True}},
    )
    assert table["variant"].tolist() == ["default", "strict"] == list(curves)
    strict = tasks.build("translation", "fr", "zh", spm_tokenizer, n=3, seed=2, strict=True)
    expected = metrics.summarize(lens.sweep(model, strict, seed=2, progress=False))
    pd.testing.assert_frame_equal(curves["strict"], expected)
    head = experiment.headline(expected)
    row = table.set_index("variant").loc["strict"]
    assert row["n_prompts"] == len(strict) and row["peak_english"] == head["peak_english"]["value"]


def test_variants_for_drops_the_cognate_filter_where_it_cannot_differ():
    assert list(experiment.variants_for("translation", "fr", "zh")) == list(experiment.VARIANTS)
    assert list(experiment.variants_for("translation", "en", "zh")) == ["default", "strict"]
    assert list(experiment.variants_for("cloze", "fr", "fr")) == ["default", "strict"]


def test_pivot_examples(tiny_models, spm_tokenizer):
    prompts = tasks.build("repetition", "zh", "zh", spm_tokenizer, n=3)
    rows = lens.sweep(tiny_models["llama"], prompts, progress=False)
    rows.insert(1, "concept", rows["prompt_id"].map(dict(zip(prompts.df["prompt_id"], prompts.df["concept"]))))
    view = experiment.pivot_examples(rows, prompts.df, layer=1)
    assert len(view) == 3 and list(view.columns)[3:] == [
        "top_token_layer1",
        "p_english",
        "top_token_last",
        "p_target_last",
    ]
    assert view["p_english"].tolist() == rows[rows["layer"] == 1]["p_english"].tolist()


def test_notebook_load_outside_ipython(tiny_models, tmp_path):
    path = save_model(tiny_models["gpt2"], tmp_path / "gpt2")
    m = notebook.load(str(path), device="cpu", level=logging.WARNING)
    assert m.fingerprint().same_model(tiny_models["gpt2"].fingerprint())
    assert logging.getLogger("llmlatent").level == logging.WARNING
