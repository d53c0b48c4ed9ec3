"""Figures: importing plots changes no global matplotlib setting; saved PNG and PDF are byte-identical across runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from llmlatent.experiments.figures import plots


def _summary(n_layers: int = 4) -> pd.DataFrame:
    x = np.arange(n_layers)
    frame = {"layer": x, "n": 5}
    for i, name in enumerate(("p_target", "p_english", "p_source", "entropy", "energy")):
        mean = (x + i) / (n_layers + 5)
        frame.update({f"{name}_mean": mean, f"{name}_lo": mean - 0.05, f"{name}_hi": mean + 0.05})
    return pd.DataFrame(frame)


def test_import_changes_no_global_setting():
    code = (
        "import matplotlib; before = dict(matplotlib.rcParams); import llmlatent.experiments.figures.plots; "
        "print(sorted(k for k, v in matplotlib.rcParams.items() if before[k] != v))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(plots.__file__).parents[2])},
    )
    assert out.stdout.strip() == "[]", f"plots changed global settings on import: {out.stdout}"
    before = {k: v for k, v in matplotlib.rcParams.items()}
    fig = plots.probability_figure(
        _summary(), {"src": "fr", "tgt": "zh"}, "中文 title"
    )  # builders use the style locally
    plt.close(fig)
    assert {k: v for k, v in matplotlib.rcParams.items()} == before
    if plots.RC:  # the CJK fallback is applied inside the builders
        assert fig.axes[0].title.get_fontfamily() == plots.RC["font.family"]


def test_saved_figures_are_byte_identical(tmp_path):
    paths = []
    for run in ("a", "b"):
        fig = plots.probability_figure(_summary(), {"src": "fr", "tgt": "zh"}, "translation fr→zh · 中文")
        paths.append(plots.save(fig, tmp_path / run / "probabilities"))
        plt.close(fig)
    for first, second in zip(*paths):
        assert first.read_bytes() == second.read_bytes(), first.name
    pdf = paths[0][1].read_bytes()
    assert pdf.startswith(b"%PDF") and b"CreationDate" not in pdf  # the only field that varied between runs


def test_variants_figure_and_task_row():
    fig = plots.variants_figure({"default": _summary(), "strict": _summary()}, title="variants")
    assert len(fig.axes[0].lines) == 4
    plt.close(fig)
    fig = plots.task_row({("fr", "fr"): _summary(), ("zh", "zh"): _summary()}, "repetition")
    assert [ax.get_title() for ax in fig.axes] == ["repetition fr", "repetition zh"]
    plt.close(fig)


def test_a_save_killed_midway_leaves_no_partial_figure(tmp_path, monkeypatch):
    """Figures go through a temporary file and a rename: a failure while writing leaves nothing under the name."""
    fig = plt.figure()
    real = fig.savefig

    def dies_on_pdf(path, **kwargs):
        if kwargs.get("format") == "pdf":
            Path(path).write_bytes(b"%PDF-1.4 half")
            raise KeyboardInterrupt
        return real(path, **kwargs)

    monkeypatch.setattr(fig, "savefig", dies_on_pdf)
    with pytest.raises(KeyboardInterrupt):
        plots.save(fig, tmp_path / "figure")
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]  # no figure.pdf, no temporary left
