"""The package functions behind the notebooks' cells: compare_variants, pivot_examples, notebook.load, sweep_run."""

from __future__ import annotations

import ast
import logging
import math
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import save_model

from llmlatent import metrics, notebook, tasks
from llmlatent.experiments import reproduce, sweep, views
from llmlatent.lens import last_token as lens

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compare_variants_equals_separate_sweeps(tiny_models, spm_tokenizer):
    model = tiny_models["llama"]
    table, curves = views.compare_variants(
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
    head = sweep.headline(expected)
    row = table.set_index("variant").loc["strict"]
    assert row["n_prompts"] == len(strict) and row["peak_english"] == head["peak_english"]["value"]


def test_variants_for_drops_the_cognate_filter_where_it_cannot_differ():
    assert list(views.variants_for("translation", "fr", "zh")) == list(views.VARIANTS)
    assert list(views.variants_for("translation", "en", "zh")) == ["default", "strict"]
    assert list(views.variants_for("cloze", "fr", "fr")) == ["default", "strict"]


def test_pivot_examples(tiny_models, spm_tokenizer):
    prompts = tasks.build("repetition", "zh", "zh", spm_tokenizer, n=3)
    rows = lens.sweep(tiny_models["llama"], prompts, progress=False)
    rows.insert(1, "concept", rows["prompt_id"].map(dict(zip(prompts.df["prompt_id"], prompts.df["concept"]))))
    view = views.pivot_examples(rows, prompts.df, layer=1)
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


def test_sweep_run_reads_back_what_the_sweep_computed(tiny_models, tmp_path):
    m = tiny_models["gemma3_text"]
    kwargs = dict(task="translation", src="fr", tgt="zh", n_prompts=3, seed=1, progress=False)
    settings = sweep.SweepSettings(**kwargs)
    view = notebook.sweep_run(m, settings, tmp_path / "fr-zh")
    result = sweep.compute(m, settings)
    assert view.out == tmp_path / "fr-zh" and view.record["n_prompts"] == len(result.prompts) == 3
    assert view.prompts["prompt"].tolist() == result.prompts.prompts
    assert len(view.rows) == len(result.rows) and view.rows["concept"].tolist() == result.rows["concept"].tolist()
    pd.testing.assert_frame_equal(view.summary, result.summary, check_exact=False, rtol=1e-6, check_dtype=False)
    assert view.title == result.title == sweep.title_of(result.prompts.meta, m.name)
    assert view.headline["peak_english"]["layer"] == view.record["peak_english"]["layer"]
    assert math.isclose(view.headline["peak_english"]["value"], view.record["peak_english"]["value"], rel_tol=1e-6)
    assert view.meta["task"] == "translation" and view.report() == result.prompts.report()
    head = view.headline["peak_english"]["layer"]
    assert len(views.pivot_examples(view.rows, view.prompts, layer=head)) == 3  # the notebooks' pivot table
    # keyword arguments name the same settings: the folder is reused (same record, nothing recomputed)
    again = notebook.sweep_run(m, kwargs, tmp_path / "fr-zh")
    assert again.record == view.record
    pd.testing.assert_frame_equal(again.rows, view.rows)


def test_playground_default_prompt_is_the_hand_prompt_of_the_committed_figure():
    path = Path(__file__).resolve().parent.parent / "notebooks" / "01_logit_lens_playground.ipynb"
    parameters = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    defaults = {
        node.targets[0].id: node.value for node in ast.parse(parameters.source).body if isinstance(node, ast.Assign)
    }
    assert ast.literal_eval(defaults["prompt"]) == reproduce.HAND_PROMPT
